//! Services from a `services_dir`: each sub-folder holds a `manifest.json` with the fields of a
//! `[[supervisor.services]]` entry, and optionally the service's persisted `config.json`. A
//! broken manifest yields a [`Loaded::Broken`] naming the file and the field; the others load.
//!
//! Reads files: call it off the arbiter (the role uses `spawn_blocking`).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::config::ServiceConfig;
use crate::spec::{check_id, ChildSpec};

/// Largest `manifest.json` read.
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// One sub-folder of the services dir.
#[derive(Debug)]
pub enum Loaded {
    /// A valid manifest.
    Service(Box<ChildSpec>),
    /// A folder whose manifest cannot be used.
    Broken {
        /// The manifest's id if readable, else the folder's name.
        id: String,
        /// Names the file and the field.
        reason: String,
    },
}

/// Loads every sub-folder of `dir` (hidden ones skipped) in name order, at most `limit`.
pub fn load_services_dir(dir: &Path, limit: usize) -> Result<Vec<Loaded>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("services_dir {}: {e}", dir.display()))?;
    let mut folders: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    folders.sort();
    if folders.len() > limit {
        return Err(format!(
            "services_dir {}: {} service folders, more than max_children ({limit})",
            dir.display(),
            folders.len()
        ));
    }
    Ok(folders.iter().map(|folder| load_one(folder)).collect())
}

fn load_one(folder: &Path) -> Loaded {
    let folder_name = folder
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = folder.join("manifest.json");
    let broken = |id: &str, reason: String| Loaded::Broken {
        id: id.to_string(),
        reason: format!("{}: {reason}", file.display()),
    };
    let text = match read_limited(&file) {
        Ok(text) => text,
        Err(e) => return broken(&folder_name, e),
    };
    let mut de = serde_json::Deserializer::from_str(&text);
    let service: ServiceConfig = match serde_path_to_error::deserialize(&mut de) {
        Ok(service) => service,
        Err(e) => {
            let path = e.path().to_string();
            let id = manifest_id(&text).unwrap_or(folder_name);
            return broken(&id, format!("field `{path}`: {}", e.into_inner()));
        }
    };
    let id = service.id.clone().unwrap_or(folder_name);
    if let Err(e) = check_id(&id) {
        let shown = if id.is_empty() { "(empty)" } else { &id };
        return broken(
            shown,
            format!("field `id`: {}", e.trim_start_matches("id: ")),
        );
    }
    match service.to_spec(&id, Some(folder), folder.join("config.json")) {
        Ok(spec) => Loaded::Service(Box::new(spec)),
        Err(e) => {
            let reason = match e.split_once(": ") {
                Some((field, rest)) if !field.contains(' ') => format!("field `{field}`: {rest}"),
                _ => e,
            };
            broken(&id, reason)
        }
    }
}

/// The id of a manifest that does not parse as a whole, if it has a usable one.
fn manifest_id(text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let id = value.get("id")?.as_str()?.to_string();
    check_id(&id).ok().map(|_| id)
}

fn read_limited(file: &Path) -> Result<String, String> {
    let f = std::fs::File::open(file).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    f.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(format!("larger than {MAX_MANIFEST_BYTES} bytes"));
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, folder: &str, manifest: Option<&str>) {
        let sub = dir.join(folder);
        std::fs::create_dir_all(&sub).unwrap();
        if let Some(text) = manifest {
            std::fs::write(sub.join("manifest.json"), text).unwrap();
        }
    }

    #[test]
    fn good_and_broken_manifests_load_side_by_side() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a-good",
            Some(r#"{"id": "good", "command": "./run.sh", "args": ["-x"], "plan": ["restart"]}"#),
        );
        write(
            dir.path(),
            "b-noid",
            Some(r#"{"command": "/bin/sleep", "args": ["1"]}"#),
        );
        write(
            dir.path(),
            "c-badplan",
            Some(r#"{"id": "badplan", "command": "/bin/true", "plan": ["reboot"]}"#),
        );
        write(dir.path(), "d-syntax", Some(r#"{"id": "x", "command": "#));
        write(dir.path(), "e-missing", None);
        write(dir.path(), "f-nocommand", Some(r#"{"id": "nocmd"}"#));
        write(dir.path(), ".hidden", Some("{}"));
        let loaded = load_services_dir(dir.path(), 100).unwrap();
        assert_eq!(loaded.len(), 6);
        let Loaded::Service(good) = &loaded[0] else {
            panic!("{loaded:?}")
        };
        assert_eq!(good.id, "good");
        let p = good.process_spec().unwrap();
        let home = dir.path().join("a-good");
        assert_eq!(
            p.command.as_deref(),
            Some(home.join("./run.sh").to_str().unwrap())
        );
        assert_eq!(p.cwd.as_deref(), Some(home.as_path()));
        assert_eq!(
            p.config_path.as_deref(),
            Some(home.join("config.json").as_path())
        );
        let Loaded::Service(noid) = &loaded[1] else {
            panic!("{loaded:?}")
        };
        assert_eq!(noid.id, "b-noid");
        let reasons: Vec<(String, String)> = loaded[2..]
            .iter()
            .map(|l| match l {
                Loaded::Broken { id, reason } => (id.clone(), reason.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(reasons[0].0, "badplan");
        assert!(
            reasons[0]
                .1
                .contains("c-badplan/manifest.json: field `plan[0]`"),
            "{}",
            reasons[0].1
        );
        assert!(
            reasons[0].1.contains("unknown plan element \"reboot\""),
            "{}",
            reasons[0].1
        );
        assert_eq!(reasons[1].0, "d-syntax");
        assert!(
            reasons[1].1.contains("d-syntax/manifest.json"),
            "{}",
            reasons[1].1
        );
        assert_eq!(reasons[2].0, "e-missing");
        assert!(reasons[2].1.contains("No such file"), "{}", reasons[2].1);
        assert_eq!(reasons[3].0, "nocmd");
        assert!(reasons[3].1.contains("field `command`"), "{}", reasons[3].1);
    }

    #[test]
    fn too_many_folders_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..3 {
            write(dir.path(), &format!("s{i}"), Some("{}"));
        }
        assert!(load_services_dir(dir.path(), 2)
            .unwrap_err()
            .contains("max_children"));
        assert!(load_services_dir(&dir.path().join("nope"), 2).is_err());
    }
}
