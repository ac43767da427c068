//! Admission of devices that know no token: a new cluster keeps an enrollment window open
//! (the operator can reopen it) in which devices found over mDNS are admitted by themselves;
//! outside it a device is *pending* until an operator approves it.
//!
//! An admitted device is handed the cluster's join token once, over the LAN, and from then
//! on joins with the usual token handshake (which also proves the orchestrator knows the
//! token, so a device refuses an impostor afterwards).

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// A device asking to be admitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub node_id: String,
    pub name: String,
    #[serde(default)]
    pub version: String,
}

/// A device waiting for an operator.
#[derive(Debug, Clone, Serialize)]
pub struct PendingDevice {
    pub node_id: String,
    pub name: String,
    pub version: String,
    pub address: String,
    /// When it first asked, ms since the epoch.
    pub since: i64,
}

/// The answer to a device.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    Admitted,
    Pending,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnrollmentError {
    #[error("no device {0} is waiting for approval")]
    NotPending(String),
    #[error("`{0}` is not a node id")]
    BadNode(String),
}

/// Most devices kept waiting at once; the oldest are forgotten first.
const MAX_PENDING: usize = 256;

/// What outlives the orchestrator process: the window and the approvals.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Kept {
    /// The window's end, ms since the epoch.
    pub open_until: Option<i64>,
    pub approved: HashSet<String>,
}

#[derive(Default)]
struct State {
    kept: Kept,
    pending: HashMap<String, PendingDevice>,
}

#[derive(Default)]
pub struct Enrollment {
    state: Mutex<State>,
}

impl Enrollment {
    /// The state to keep (store it after every change).
    pub fn kept(&self) -> Kept {
        self.lock().kept.clone()
    }

    /// Takes back what an earlier process kept.
    pub fn restore(&self, kept: Kept) {
        self.lock().kept = kept;
    }

    /// Admits devices by themselves for `secs` from now (0 closes the window).
    pub fn open(&self, secs: u64) {
        let mut s = self.lock();
        s.kept.open_until = (secs > 0).then(|| crate::now_ms() + secs as i64 * 1000);
    }

    /// Seconds left in the window, if open.
    pub fn remaining(&self) -> Option<u64> {
        let left = self.lock().kept.open_until? - crate::now_ms();
        // rounded up: a window just opened for 60 s has 60 s left
        (left > 0).then(|| (left as u64).div_ceil(1000))
    }

    /// Decides on a device: admitted inside the window or once approved; pending otherwise.
    pub fn ask(&self, req: &EnrollRequest, address: &str) -> Result<Admission, EnrollmentError> {
        if !crate::identity::plain_id(&req.node_id, 2) {
            return Err(EnrollmentError::BadNode(req.node_id.clone()));
        }
        let open = self.remaining().is_some();
        let mut s = self.lock();
        if open || s.kept.approved.contains(&req.node_id) {
            s.pending.remove(&req.node_id);
            return Ok(Admission::Admitted);
        }
        if !s.pending.contains_key(&req.node_id) {
            if s.pending.len() >= MAX_PENDING {
                if let Some(oldest) = s
                    .pending
                    .values()
                    .min_by_key(|p| p.since)
                    .map(|p| p.node_id.clone())
                {
                    s.pending.remove(&oldest);
                }
            }
            tracing::info!(node = %req.node_id, name = %req.name, %address, "a device asks to join; approve it with `kraken nodes approve {}`", req.node_id);
        }
        let since = s
            .pending
            .get(&req.node_id)
            .map_or_else(crate::now_ms, |p| p.since);
        s.pending.insert(
            req.node_id.clone(),
            PendingDevice {
                node_id: req.node_id.clone(),
                name: clip(&req.name),
                version: clip(&req.version),
                address: address.to_owned(),
                since,
            },
        );
        Ok(Admission::Pending)
    }

    /// Approves a pending device; it is admitted at its next ask.
    pub fn approve(&self, node_id: &str) -> Result<PendingDevice, EnrollmentError> {
        let mut s = self.lock();
        let device = s
            .pending
            .get(node_id)
            .cloned()
            .ok_or_else(|| EnrollmentError::NotPending(node_id.to_owned()))?;
        s.kept.approved.insert(node_id.to_owned());
        Ok(device)
    }

    /// Devices waiting for approval, oldest first.
    pub fn pending(&self) -> Vec<PendingDevice> {
        let mut v: Vec<PendingDevice> = self.lock().pending.values().cloned().collect();
        v.sort_by_key(|p| p.since);
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: &str) -> EnrollRequest {
        EnrollRequest {
            node_id: id.into(),
            name: "pi".into(),
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn the_window_admits_and_approval_admits_later() {
        let e = Enrollment::default();
        e.open(60);
        assert!(e.remaining().is_some());
        assert_eq!(e.ask(&req("n1"), "10.0.0.2"), Ok(Admission::Admitted));
        e.open(0);
        assert_eq!(e.remaining(), None);
        assert_eq!(e.ask(&req("n2"), "10.0.0.3"), Ok(Admission::Pending));
        assert_eq!(e.ask(&req("n2"), "10.0.0.3"), Ok(Admission::Pending));
        assert_eq!(e.pending().len(), 1);
        assert_eq!(e.pending()[0].address, "10.0.0.3");
        assert_eq!(
            e.approve("n9").unwrap_err(),
            EnrollmentError::NotPending("n9".into())
        );
        e.approve("n2").unwrap();
        assert_eq!(e.ask(&req("n2"), "10.0.0.3"), Ok(Admission::Admitted));
        assert!(e.pending().is_empty());
        // what a restarted orchestrator takes back
        let again = Enrollment::default();
        again.restore(e.kept());
        assert_eq!(again.ask(&req("n2"), "10.0.0.3"), Ok(Admission::Admitted));
        assert_eq!(again.ask(&req("n3"), "10.0.0.4"), Ok(Admission::Pending));
        assert_eq!(
            e.ask(&req("N/../x"), ""),
            Err(EnrollmentError::BadNode("N/../x".into()))
        );
    }
}
