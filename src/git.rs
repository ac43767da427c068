//! Git, run as a child process that never prompts: the command every caller builds on, and
//! [`Checkout`], a working copy kept at its remote's tip (the NetKAN and metadata
//! repositories of the pipeline). Credentials for http(s) remotes travel as a header given
//! on the command line of each call, never written into the checkout's config or a message.

use base64::Engine;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git {args}: {message}")]
    Failed { args: String, message: String },
    #[error("git {args}: no answer within {secs} s")]
    Timeout { args: String, secs: u64 },
    #[error("cannot run git: {0}")]
    Spawn(std::io::Error),
    #[error("{0}")]
    Invalid(String),
}

/// Longest one git call may take.
const TIMEOUT: Duration = Duration::from_secs(300);

/// A git command that never asks for a password (a private repository fails with git's own
/// message) and dies with its future.
pub fn command(args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("git");
    c.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "true")
        .env("SSH_ASKPASS", "true")
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    c
}

/// Who commits, and with what credentials the remote is reached.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub name: String,
    pub email: String,
    /// `user:token` for http(s) remotes (sent as HTTP basic authorization), or empty.
    pub credentials: String,
}

/// A working copy of one remote's default branch.
pub struct Checkout {
    dir: PathBuf,
    branch: String,
    /// `-c key=value` options every call carries (identity, credentials).
    options: Vec<String>,
}

impl Checkout {
    /// Clones `url` into `dir`, or brings the checkout already there to the remote's tip;
    /// anything local that was not pushed is dropped.
    pub async fn sync(url: &str, dir: &Path, who: &Identity) -> Result<Self, GitError> {
        if url.starts_with('-') {
            return Err(GitError::Invalid(format!("`{url}` is not a git URL")));
        }
        let mut options = vec![
            format!("user.name={}", who.name),
            format!("user.email={}", who.email),
        ];
        if !who.credentials.is_empty() {
            let basic = base64::engine::general_purpose::STANDARD.encode(&who.credentials);
            options.push(format!("http.extraHeader=Authorization: Basic {basic}"));
        }
        let mut me = Self {
            dir: dir.to_owned(),
            branch: String::new(),
            options,
        };
        if !dir.join(".git").is_dir() {
            let _ = std::fs::remove_dir_all(dir);
            if let Some(parent) = dir.parent() {
                std::fs::create_dir_all(parent).map_err(GitError::Spawn)?;
            }
            let d = dir.to_string_lossy().into_owned();
            me.run_in(None, &["clone", "--quiet", "--", url, &d])
                .await?;
        } else {
            me.git(&["remote", "set-url", "origin", url]).await?;
            me.git(&["fetch", "--quiet", "--prune", "origin"]).await?;
            // the remote's default branch may have changed since the clone
            let _ = me.git(&["remote", "set-head", "origin", "--auto"]).await;
        }
        let head = me
            .git(&["rev-parse", "--abbrev-ref", "origin/HEAD"])
            .await?;
        me.branch = head
            .trim()
            .strip_prefix("origin/")
            .unwrap_or("main")
            .to_owned();
        me.reset().await?;
        Ok(me)
    }

    /// Back to the remote branch's tip as last fetched, with nothing local left.
    pub async fn reset(&self) -> Result<(), GitError> {
        let tip = format!("origin/{}", self.branch);
        self.git(&["checkout", "--quiet", "--force", "-B", &self.branch, &tip])
            .await?;
        self.git(&["reset", "--quiet", "--hard", &tip]).await?;
        self.git(&["clean", "--quiet", "-fdx"]).await?;
        Ok(())
    }

    /// Fetches and resets to the remote's tip.
    pub async fn refresh(&self) -> Result<(), GitError> {
        self.git(&["fetch", "--quiet", "--prune", "origin"]).await?;
        self.reset().await
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The remote's default branch.
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// Runs git in the checkout and returns its standard output.
    pub async fn git(&self, args: &[&str]) -> Result<String, GitError> {
        self.run_in(Some(&self.dir), args).await
    }

    /// Commits every change under `paths` with `message`; false when there was nothing to
    /// commit.
    pub async fn commit(&self, paths: &[&str], message: &str) -> Result<bool, GitError> {
        let mut add = vec!["add", "--"];
        add.extend_from_slice(paths);
        self.git(&add).await?;
        if self.git(&["diff", "--cached", "--quiet"]).await.is_ok() {
            return Ok(false);
        }
        self.git(&["commit", "--quiet", "--no-verify", "-m", message])
            .await?;
        Ok(true)
    }

    /// Commits `path`, which the caller knows has changed, with `message` (two `git` runs
    /// where [`Checkout::commit`] takes three).
    pub async fn commit_file(&self, path: &str, message: &str) -> Result<(), GitError> {
        self.git(&["add", "--", path]).await?;
        self.git(&["commit", "--quiet", "--no-verify", "-m", message])
            .await
            .map(drop)
    }

    /// Pushes `local` to the remote branch `remote`; `Ok(false)` when the remote refused
    /// it as not a fast-forward (someone pushed first).
    pub async fn push(&self, local: &str, remote: &str, force: bool) -> Result<bool, GitError> {
        let refspec = format!(
            "{}{local}:refs/heads/{remote}",
            if force { "+" } else { "" }
        );
        match self
            .git(&["push", "--quiet", "--porcelain", "origin", &refspec])
            .await
        {
            Ok(_) => Ok(true),
            Err(GitError::Failed { message, .. })
                if message.contains("non-fast-forward")
                    || message.contains("fetch first")
                    || message.contains("[rejected]") =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    async fn run_in(&self, dir: Option<&Path>, args: &[&str]) -> Result<String, GitError> {
        let mut full: Vec<&str> = Vec::new();
        for o in &self.options {
            full.push("-c");
            full.push(o);
        }
        let d;
        if let Some(dir) = dir {
            d = dir.to_string_lossy().into_owned();
            full.extend(["-C", &d]);
        }
        full.extend_from_slice(args);
        // the message names the subcommand only: the options carry credentials
        let shown = args.iter().take(2).copied().collect::<Vec<_>>().join(" ");
        let out = tokio::time::timeout(TIMEOUT, command(&full).output())
            .await
            .map_err(|_| GitError::Timeout {
                args: shown.clone(),
                secs: TIMEOUT.as_secs(),
            })?
            .map_err(GitError::Spawn)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let message = format!("{} {}", stderr.trim(), stdout.trim());
        Err(GitError::Failed {
            args: shown,
            message: message.trim().chars().take(2000).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sh(dir: &Path, args: &[&str]) {
        let ok = command(args).current_dir(dir).status().await.unwrap();
        assert!(ok.success(), "{args:?}");
    }

    #[tokio::test]
    async fn a_checkout_commits_pushes_and_sees_a_refused_push() {
        let root = tempfile::tempdir().unwrap();
        let remote = root.path().join("remote.git");
        sh(
            root.path(),
            &["init", "--quiet", "--bare", "-b", "trunk", "remote.git"],
        )
        .await;
        // a first commit, from another clone
        let seed = root.path().join("seed");
        sh(root.path(), &["clone", "--quiet", "remote.git", "seed"]).await;
        std::fs::write(seed.join("README"), "hi\n").unwrap();
        let who = Identity {
            name: "Test".into(),
            email: "t@example.org".into(),
            credentials: String::new(),
        };
        let url = remote.to_string_lossy().into_owned();
        sh(
            &seed,
            &["-c", "user.name=a", "-c", "user.email=a@b", "add", "."],
        )
        .await;
        sh(
            &seed,
            &[
                "-c",
                "user.name=a",
                "-c",
                "user.email=a@b",
                "commit",
                "-qm",
                "one",
            ],
        )
        .await;
        sh(&seed, &["push", "-q", "origin", "HEAD:trunk"]).await;

        let a = Checkout::sync(&url, &root.path().join("a"), &who)
            .await
            .unwrap();
        assert_eq!(a.branch(), "trunk");
        let b = Checkout::sync(&url, &root.path().join("b"), &who)
            .await
            .unwrap();
        std::fs::write(a.dir().join("x"), "1").unwrap();
        assert!(a.commit(&["x"], "add x").await.unwrap());
        assert!(!a.commit(&["x"], "again").await.unwrap(), "nothing new");
        assert!(a.push("HEAD", "trunk", false).await.unwrap());
        std::fs::write(b.dir().join("y"), "2").unwrap();
        assert!(b.commit(&["y"], "add y").await.unwrap());
        assert!(
            !b.push("HEAD", "trunk", false).await.unwrap(),
            "b is behind: refused"
        );
        b.refresh().await.unwrap();
        assert!(b.dir().join("x").exists() && !b.dir().join("y").exists());
        let log = a.git(&["log", "--format=%an %s"]).await.unwrap();
        assert!(log.starts_with("Test add x"), "{log}");
    }
}
