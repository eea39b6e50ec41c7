//! Reading a settings tree so that every missing key is named, not just the first: serde stops
//! at the first missing field, so each one found is filled with a placeholder and
//! deserialization repeats.

use figment::providers::Serialized;
use figment::value::Value;
use figment::{Figment, error::Kind};
use serde::de::DeserializeOwned;

#[derive(Debug, Default)]
pub(super) struct Problems {
    pub missing: Vec<String>,
    pub invalid: Vec<String>,
}

impl Problems {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.invalid.is_empty()
    }

    pub fn absorb(&mut self, other: Problems) {
        self.missing.extend(other.missing);
        self.invalid.extend(other.invalid);
    }

    pub fn into_messages(mut self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.missing.is_empty() {
            self.missing.sort();
            out.push(format!(
                "missing settings: {} (or run `serve --dev`)",
                self.missing.join(", ")
            ));
        }
        out.extend(self.invalid);
        out
    }
}

/// Values tried in place of a missing key, so that deserialization goes on to the next one.
fn placeholders() -> [Value; 6] {
    [
        Value::from(""),
        Value::from("0s"),
        Value::from(false),
        Value::from(0u8),
        Value::from(figment::value::Dict::new()),
        Value::from(Vec::<Value>::new()),
    ]
}

/// A missing key and the placeholder standing in for it.
#[derive(Debug)]
struct Hole {
    /// Where serde said the field is missing, and the field.
    reported_at: String,
    field: String,
    /// Tables the field may belong to: inside an internally tagged section serde reports the
    /// section, not the nested table (e.g. `kiv` for `kiv.bind.password`).
    tables: Vec<String>,
    table: usize,
    candidate: usize,
    /// A variant name, when the placeholder must be one of an enum's.
    variant: Option<&'static str>,
    /// Index of its entry in `Problems::missing`; none for a wrong value stood in for.
    entry: Option<usize>,
}

impl Hole {
    fn key(&self) -> String {
        join(&self.tables[self.table], &self.field)
    }

    fn value(&self, candidates: &[Value]) -> Value {
        match self.variant {
            Some(v) => Value::from(v),
            None => candidates[self.candidate].clone(),
        }
    }

    /// Tries the next table; false when none is left.
    fn relocate(&mut self) -> bool {
        self.table += 1;
        self.candidate = 0;
        self.variant = None;
        self.table < self.tables.len()
    }
}

/// Deserializes `T`, collecting every missing key: serde stops at the first missing field, so
/// each one found is filled with a placeholder of a fitting type and deserialization repeats.
/// Returns the value (meaningful only without problems) and the problems, keys prefixed with
/// `prefix`.
pub(super) fn extract<T: DeserializeOwned>(base: Figment, prefix: &str) -> (Option<T>, Problems) {
    let mut problems = Problems::default();
    let mut holes: Vec<Hole> = Vec::new();
    let candidates = placeholders();
    // Each round fills a key or moves one placeholder on: bounded by the tree's size.
    for _ in 0..500 {
        let figment = holes.iter().fold(base.clone(), |f, h| {
            f.merge(Serialized::default(&h.key(), h.value(&candidates)))
        });
        let error = match figment.extract::<T>() {
            Ok(v) => return (Some(v), problems),
            Err(e) => e,
        };
        let mut progressed = false;
        for e in error {
            let at = e.path.join(".");
            let hole = match &e.kind {
                Kind::MissingField(field) => holes
                    .iter()
                    .position(|h| h.reported_at == at && h.field == *field),
                Kind::UnknownField(field, _) => {
                    let key = join(&at, field);
                    holes.iter().position(|h| h.key() == key)
                }
                _ => holes.iter().position(|h| h.key() == at),
            };
            match (&e.kind, hole) {
                (Kind::MissingField(_) | Kind::UnknownField(..), Some(i)) => {
                    // Our placeholder sits in the wrong table.
                    let h = &mut holes[i];
                    if !h.relocate() {
                        return (None, problems);
                    }
                    if let Some(entry) = h.entry {
                        problems.missing[entry] = join(prefix, &h.key());
                    }
                }
                (Kind::MissingField(field), None) => {
                    let mut tables = vec![at.clone()];
                    nested_tables(&base, &at, &mut tables);
                    problems.missing.push(join(prefix, &join(&at, field)));
                    holes.push(Hole {
                        reported_at: at,
                        field: field.to_string(),
                        tables,
                        table: 0,
                        candidate: 0,
                        variant: None,
                        entry: Some(problems.missing.len() - 1),
                    });
                }
                (kind, Some(i)) => {
                    // Our placeholder has the wrong type: try the next kind of value.
                    let h = &mut holes[i];
                    match kind {
                        Kind::UnknownVariant(_, expected) if h.variant.is_none() => {
                            h.variant = expected.first().copied();
                        }
                        _ => h.candidate += 1,
                    }
                    if h.variant.is_none() && h.candidate >= candidates.len() {
                        return (None, problems);
                    }
                }
                (kind, None) => {
                    problems.invalid.push(describe(&join(prefix, &at), &e));
                    // A wrong single value is stood in for, so the keys after it are checked
                    // too; inside a tagged section serde names only the section: stop there.
                    let leaf = !matches!(kind, Kind::UnknownField(..))
                        && matches!(figment.find_value(&at), Ok(v) if !matches!(v, Value::Dict(..)));
                    let Some((table, field)) = at.rsplit_once('.').filter(|_| leaf) else {
                        return (None, problems);
                    };
                    holes.push(Hole {
                        reported_at: at.clone(),
                        field: field.to_owned(),
                        tables: vec![table.to_owned()],
                        table: 0,
                        candidate: 0,
                        variant: match kind {
                            Kind::UnknownVariant(_, expected) => expected.first().copied(),
                            _ => None,
                        },
                        entry: None,
                    });
                }
            }
            progressed = true;
        }
        if !progressed {
            return (None, problems);
        }
    }
    (None, problems)
}

/// Appends the dotted paths of every table below `path`.
fn nested_tables(figment: &Figment, path: &str, out: &mut Vec<String>) {
    let value = if path.is_empty() {
        figment.extract::<Value>().ok()
    } else {
        figment.find_value(path).ok()
    };
    if let Some(Value::Dict(_, dict)) = value {
        for (k, v) in dict {
            if matches!(v, Value::Dict(..)) {
                let child = join(path, &k);
                out.push(child.clone());
                nested_tables(figment, &child, out);
            }
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    match (prefix.is_empty(), key.is_empty()) {
        (true, _) => key.to_owned(),
        (_, true) => prefix.to_owned(),
        _ => format!("{prefix}.{key}"),
    }
}

/// `key: what is wrong (in which source)`.
fn describe(key: &str, e: &figment::Error) -> String {
    let source = match &e.metadata {
        Some(md) => match &md.source {
            Some(src) => format!(" (in {} {src})", md.name),
            None => format!(" (in {})", md.name),
        },
        None => String::new(),
    };
    if key.is_empty() {
        format!("{}{source}", e.kind)
    } else {
        format!("{key}: {}{source}", e.kind)
    }
}
