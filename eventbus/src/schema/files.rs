//! Schemas from files: one file, or a directory laid out as `{event type}/{version}.json`.

use std::path::Path;

use serde_json::Value;

use crate::schema::{SchemaError, SchemaRegistry};

fn read_json(path: &Path) -> Result<Value, SchemaError> {
    let file = |reason: String| SchemaError::File {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| file(e.to_string()))
}

/// Sort key putting `2.json` before `10.json` (then by name).
fn natural_key(p: &Path) -> (u64, String) {
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let digits: String = stem.chars().filter(char::is_ascii_digit).collect();
    (digits.parse().unwrap_or(u64::MAX), stem)
}

impl SchemaRegistry {
    /// Registers a schema read from a JSON file (checked like [`SchemaRegistry::register`]).
    pub fn register_file(
        &self,
        event_type: &str,
        version: &str,
        path: impl AsRef<Path>,
    ) -> Result<(), SchemaError> {
        self.register(event_type, version, read_json(path.as_ref())?)
    }

    /// Loads a directory laid out as `{event type}/{version}.json`, the versions of a type in
    /// natural order (`2` before `10`), each checked against the ones before it under the
    /// registry's compatibility rule. The version registered is the schema's `$id` when it has
    /// one, else the file stem. Returns how many schemas were registered; stops at the first
    /// refused one.
    pub fn load_dir(&self, dir: impl AsRef<Path>) -> Result<usize, SchemaError> {
        let dir = dir.as_ref();
        let io = |p: &Path, e: std::io::Error| SchemaError::File {
            path: p.display().to_string(),
            reason: e.to_string(),
        };
        let mut n = 0;
        let mut types: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| io(dir, e))?
            .filter_map(|e| e.ok())
            .collect();
        types.sort_by_key(|e| e.file_name());
        for ty in types {
            if !ty.path().is_dir() {
                continue;
            }
            let ty_name = ty.file_name().to_string_lossy().into_owned();
            let mut files: Vec<_> = std::fs::read_dir(ty.path())
                .map_err(|e| io(&ty.path(), e))?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            files.sort_by_key(|p| natural_key(p));
            for f in files {
                let schema = read_json(&f)?;
                let stem = f
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let version = schema
                    .get("$id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or(stem);
                self.register(&ty_name, &version, schema)?;
                n += 1;
            }
        }
        Ok(n)
    }
}
