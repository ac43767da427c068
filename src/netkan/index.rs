//! The metadata repository's layout (CKAN-meta: `<identifier>/<identifier>-<version>.ckan`)
//! and what the indexer writes there: a file changes iff it is missing or its bytes differ,
//! with NetKAN's commit messages. The git side is [`crate::git`]; the orchestrator runs the
//! indexer.

use super::version::cmp_str;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One inflated `.ckan` waiting to be indexed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexItem {
    pub identifier: String,
    /// `<identifier>-<version>.ckan`.
    pub file_name: String,
    pub ckan: String,
    pub staged: bool,
    pub staging_reason: Option<String>,
}

impl IndexItem {
    /// `<identifier>-<version>`: the file name without `.ckan`.
    pub fn stem(&self) -> &str {
        self.file_name
            .strip_suffix(".ckan")
            .unwrap_or(&self.file_name)
    }

    /// The path in the repository, relative to its root.
    pub fn path(&self) -> String {
        format!("{}/{}", self.identifier, self.file_name)
    }

    /// Whether the names are safe to write under a repository root (they come from a
    /// job's result).
    pub fn safe(&self) -> bool {
        super::ckan::valid_identifier(&self.identifier)
            && self.file_name.ends_with(".ckan")
            && self.file_name.starts_with(&format!("{}-", self.identifier))
            && !self.file_name.contains(['/', '\\'])
            && !self.file_name.contains("..")
    }
}

/// What writing a `.ckan` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    Added,
    Updated,
    Unchanged,
}

impl Change {
    /// NetKAN's commit message for the change of `<identifier>-<version>`.
    pub fn message(self, stem: &str) -> Option<String> {
        match self {
            Self::Added => Some(format!("NetKAN added mod - {stem}")),
            Self::Updated => Some(format!("NetKAN updated mod - {stem}")),
            Self::Unchanged => None,
        }
    }
}

/// Writes `item` under `root` unless the same bytes are already there.
pub fn write(root: &Path, item: &IndexItem) -> std::io::Result<Change> {
    if !item.safe() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "`{}` is not a .ckan file name of {}",
                item.file_name, item.identifier
            ),
        ));
    }
    let dir = root.join(&item.identifier);
    let path = dir.join(&item.file_name);
    let change = match std::fs::read(&path) {
        Ok(old) if old == item.ckan.as_bytes() => return Ok(Change::Unchanged),
        Ok(_) => Change::Updated,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Change::Added,
        Err(e) => return Err(e),
    };
    std::fs::create_dir_all(&dir)?;
    std::fs::write(&path, &item.ckan)?;
    Ok(change)
}

/// The highest version of `identifier` in the repository at `root` (for the inflator's
/// out-of-order check), read from the `version` of its `.ckan` files.
pub fn highest_version(root: &Path, identifier: &str) -> Option<String> {
    let entries = std::fs::read_dir(root.join(identifier)).ok()?;
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "ckan"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|text| {
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            v.get("version")?.as_str().map(str::to_owned)
        })
        .max_by(|a, b| cmp_str(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, file: &str, text: &str) -> IndexItem {
        IndexItem {
            identifier: id.into(),
            file_name: file.into(),
            ckan: text.into(),
            staged: false,
            staging_reason: None,
        }
    }

    #[test]
    fn a_file_changes_only_when_its_bytes_do() {
        let root = tempfile::tempdir().unwrap();
        let a = item("Astro", "Astro-1.0.ckan", "{\"version\": \"1.0\"}\n");
        assert_eq!(write(root.path(), &a).unwrap(), Change::Added);
        assert_eq!(write(root.path(), &a).unwrap(), Change::Unchanged);
        let b = item(
            "Astro",
            "Astro-1.0.ckan",
            "{\"version\": \"1.0\", \"x\": 1}\n",
        );
        assert_eq!(write(root.path(), &b).unwrap(), Change::Updated);
        assert_eq!(
            Change::Updated.message(b.stem()).unwrap(),
            "NetKAN updated mod - Astro-1.0"
        );
        assert_eq!(
            Change::Added.message("Astro-1.0").unwrap(),
            "NetKAN added mod - Astro-1.0"
        );
        write(
            root.path(),
            &item("Astro", "Astro-1.10.ckan", "{\"version\": \"1.10\"}"),
        )
        .unwrap();
        write(
            root.path(),
            &item("Astro", "Astro-1.9.ckan", "{\"version\": \"1.9\"}"),
        )
        .unwrap();
        assert_eq!(highest_version(root.path(), "Astro").unwrap(), "1.10");
        assert_eq!(highest_version(root.path(), "Nope"), None);
    }

    #[test]
    fn names_from_a_result_cannot_escape_the_repository() {
        let root = tempfile::tempdir().unwrap();
        for (id, file) in [
            ("..", "..-1.ckan"),
            ("A1", "../A1-1.ckan"),
            ("A1", "A1-1.txt"),
            ("A1", "B1-1.ckan"),
            ("A1", "A1-1/x.ckan"),
        ] {
            assert!(
                write(root.path(), &item(id, file, "{}")).is_err(),
                "{id} {file}"
            );
        }
    }
}
