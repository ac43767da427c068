//! A NetKAN repository on disk: its `.netkan` files by identifier (`NetKAN/<id>.netkan`, or
//! `<id>.netkan` at the root when there is no `NetKAN` directory) and its frozen mods
//! (`<id>.frozen` beside them).

use super::NetkanError;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// One mod read from the repository.
#[derive(Debug, Clone, PartialEq)]
pub struct RepoMod {
    pub identifier: String,
    pub text: String,
}

pub struct NetkanRepo {
    dir: PathBuf,
}

impl NetkanRepo {
    /// The repository checked out at `root`.
    pub fn open(root: &Path) -> Result<Self, NetkanError> {
        if !root.is_dir() {
            return Err(NetkanError::BadNetkan(format!(
                "the NetKAN repository {} is not a directory",
                root.display()
            )));
        }
        let nested = root.join("NetKAN");
        Ok(Self {
            dir: if nested.is_dir() {
                nested
            } else {
                root.to_owned()
            },
        })
    }

    /// Identifiers of every mod, frozen ones included, sorted.
    pub fn identifiers(&self) -> Result<BTreeSet<String>, NetkanError> {
        self.stems("netkan")
    }

    /// Identifiers of the frozen mods.
    pub fn frozen(&self) -> Result<BTreeSet<String>, NetkanError> {
        self.stems("frozen")
    }

    fn stems(&self, ext: &str) -> Result<BTreeSet<String>, NetkanError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| {
            NetkanError::BadNetkan(format!("cannot read {}: {e}", self.dir.display()))
        })?;
        Ok(entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .filter_map(|p| p.file_stem().and_then(|s| s.to_str()).map(str::to_owned))
            .collect())
    }

    /// The netkans of `identifiers`, in the order given, duplicates dropped. Every
    /// identifier that is unknown, frozen or not an identifier at all is named in one error.
    pub fn read(&self, identifiers: &[String]) -> Result<Vec<RepoMod>, NetkanError> {
        let frozen = self.frozen()?;
        let mut seen = BTreeSet::new();
        let mut mods = Vec::new();
        let mut problems = Vec::new();
        for id in identifiers {
            if !seen.insert(id.as_str()) {
                continue;
            }
            if !super::ckan::valid_identifier(id) {
                problems.push(format!("`{id}` is not a mod identifier"));
                continue;
            }
            if frozen.contains(id) {
                problems.push(format!("{id} is frozen ({id}.frozen)"));
                continue;
            }
            let path = self.dir.join(format!("{id}.netkan"));
            match std::fs::read_to_string(&path) {
                Ok(text) => mods.push(RepoMod {
                    identifier: id.clone(),
                    text,
                }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    problems.push(format!("{id} has no {id}.netkan in {}", self.dir.display()))
                }
                Err(e) => problems.push(format!("cannot read {}: {e}", path.display())),
            }
        }
        if problems.is_empty() {
            Ok(mods)
        } else {
            Err(NetkanError::BadNetkan(problems.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mods_and_names_every_problem() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("NetKAN");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("Alpha.netkan"), "identifier: Alpha\n").unwrap();
        std::fs::write(dir.join("Beta.netkan"), "identifier: Beta\n").unwrap();
        std::fs::write(dir.join("Beta.frozen"), "").unwrap();
        std::fs::write(dir.join("README.md"), "").unwrap();
        let repo = NetkanRepo::open(root.path()).unwrap();
        assert_eq!(
            repo.identifiers().unwrap().into_iter().collect::<Vec<_>>(),
            ["Alpha", "Beta"]
        );
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mods = repo.read(&ids(&["Alpha", "Alpha"])).unwrap();
        assert_eq!(mods.len(), 1);
        assert_eq!(mods[0].text, "identifier: Alpha\n");
        let err = repo
            .read(&ids(&["Alpha", "Beta", "Gamma", "../etc/passwd"]))
            .unwrap_err()
            .to_string();
        for expected in [
            "Beta is frozen",
            "Gamma has no Gamma.netkan",
            "`../etc/passwd` is not",
        ] {
            assert!(err.contains(expected), "`{err}` should say `{expected}`");
        }
        assert!(NetkanRepo::open(&root.path().join("nope")).is_err());
    }
}
