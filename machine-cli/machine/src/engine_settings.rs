//! The engine's settings of a machine (`daemon.json`): what `rmachine config set engine …`
//! and the desktop edit, checked before they are stored and applied at the next start
//! (the agent writes them for dockerd). Only the settings that make sense for a machine
//! are taken, each with its type: dockerd refuses to start on a setting it does not know
//! or on one given both as a flag and in the file (the agent passes `-H`,
//! `--containerd` and `--host-gateway-ip` itself), and a machine whose engine does not
//! start is worse than a clear error now.

use serde_json::{Map, Value};

/// The settings a machine's `daemon.json` may carry, with what each must be.
const ALLOWED: &[(&str, Kind)] = &[
    ("insecure-registries", Kind::Strings),
    ("registry-mirrors", Kind::Strings),
    ("log-driver", Kind::String),
    ("log-opts", Kind::StringMap),
    ("log-level", Kind::String),
    ("default-address-pools", Kind::AddressPools),
    ("features", Kind::BoolMap),
    ("live-restore", Kind::Bool),
    ("debug", Kind::Bool),
    ("experimental", Kind::Bool),
    ("ipv6", Kind::Bool),
    ("fixed-cidr-v6", Kind::String),
    ("mtu", Kind::Number),
    ("dns", Kind::Strings),
    ("dns-search", Kind::Strings),
    ("max-concurrent-downloads", Kind::Number),
    ("max-concurrent-uploads", Kind::Number),
    ("default-ulimits", Kind::Object),
    ("builder", Kind::Object),
    ("labels", Kind::Strings),
    ("bip", Kind::String),
];

#[derive(Debug, Clone, Copy)]
enum Kind {
    Bool,
    Number,
    String,
    Strings,
    StringMap,
    BoolMap,
    Object,
    /// `[{"base": "10.99.0.0/16", "size": 24}, …]`.
    AddressPools,
}

impl Kind {
    fn check(self, value: &Value) -> Result<(), &'static str> {
        let ok = match self {
            Kind::Bool => value.is_boolean(),
            Kind::Number => value.as_u64().is_some(),
            Kind::String => value.is_string(),
            Kind::Strings => value
                .as_array()
                .is_some_and(|a| a.iter().all(Value::is_string)),
            Kind::StringMap => value
                .as_object()
                .is_some_and(|m| m.values().all(Value::is_string)),
            Kind::BoolMap => value
                .as_object()
                .is_some_and(|m| m.values().all(Value::is_boolean)),
            Kind::Object => value.is_object(),
            Kind::AddressPools => value.as_array().is_some_and(|pools| {
                pools.iter().all(|p| {
                    p.as_object().is_some_and(|p| {
                        p.len() == 2
                            && p.get("base").and_then(Value::as_str).is_some()
                            && p.get("size").and_then(Value::as_u64).is_some()
                    })
                })
            }),
        };
        if ok {
            Ok(())
        } else {
            Err(match self {
                Kind::Bool => "must be true or false",
                Kind::Number => "must be a whole number",
                Kind::String => "must be a string",
                Kind::Strings => "must be a list of strings",
                Kind::StringMap => "must be an object of strings",
                Kind::BoolMap => "must be an object of true/false",
                Kind::Object => "must be an object",
                Kind::AddressPools => "must be a list of {\"base\": CIDR, \"size\": N}",
            })
        }
    }
}

/// The names of the settings a machine's engine may take.
pub fn allowed() -> Vec<&'static str> {
    ALLOWED.iter().map(|(k, _)| *k).collect()
}

/// Checks every setting; the error names the first that cannot be used and why.
pub fn validate(settings: &Map<String, Value>) -> Result<(), String> {
    for (key, value) in settings {
        let Some((_, kind)) = ALLOWED.iter().find(|(k, _)| k == key) else {
            return Err(format!(
                "{key:?} cannot be set for a machine's engine (allowed: {})",
                allowed().join(", ")
            ));
        };
        kind.check(value).map_err(|why| format!("{key} {why}"))?;
    }
    Ok(())
}

/// Parses `text` as a setting's value: JSON (`true`, `["a", "b"]`, `{"k": "v"}`), or
/// else the text itself as a string (`json-file`).
pub fn parse_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn test_known_settings_of_the_right_type_pass() {
        validate(&map(json!({
            "insecure-registries": ["192.168.105.2:5000"],
            "registry-mirrors": ["http://192.168.105.2:5000"],
            "log-driver": "local",
            "log-opts": {"max-size": "10m"},
            "default-address-pools": [{"base": "10.201.0.0/16", "size": 24}],
            "features": {"buildkit": true},
            "live-restore": false,
            "mtu": 1450
        })))
        .unwrap();
    }

    #[test]
    fn test_unknown_flag_bound_and_mistyped_settings_are_named() {
        for (bad, words) in [
            (
                json!({"hosts": ["tcp://0.0.0.0:2375"]}),
                "\"hosts\" cannot be set",
            ),
            (json!({"data-root": "/x"}), "cannot be set"),
            (
                json!({"insecure-registries": "r:5000"}),
                "insecure-registries must be a list",
            ),
            (
                json!({"live-restore": "yes"}),
                "live-restore must be true or false",
            ),
            (
                json!({"default-address-pools": [{"base": "10.0.0.0/8"}]}),
                "default-address-pools",
            ),
            (json!({"mtu": -1}), "mtu must be a whole number"),
        ] {
            let err = validate(&map(bad)).unwrap_err();
            assert!(err.contains(words), "{err}");
        }
    }

    #[test]
    fn test_values_parse_as_json_or_text() {
        assert_eq!(parse_value("true"), json!(true));
        assert_eq!(parse_value("[\"a\"]"), json!(["a"]));
        assert_eq!(parse_value("json-file"), json!("json-file"));
    }
}
