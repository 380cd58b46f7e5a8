//! Configuration: an optional TOML file (unknown keys are an error) overridden by command-line
//! flags, validated into a `Config`. Secrets are referenced by file path, never inlined.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::vault::Limits;

/// The validated configuration of `strongroom serve`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory (RocksDB and, by default, the master key file).
    pub data_dir: PathBuf,
    /// Directory holding `model.conf`, `policy.csv` and `schema.toml`.
    pub policies_dir: PathBuf,
    /// The master key file.
    pub master_key_file: PathBuf,
    /// Read the master key from this environment variable instead of the file.
    pub master_key_env: Option<String>,
    /// Per-request limits.
    pub limits: Limits,
    /// Largest gRPC message accepted or sent, in bytes.
    pub max_message_bytes: usize,
    /// Most concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// Audit log settings (retention, checkpoint interval).
    pub audit: crate::audit::AuditOptions,
    /// Do not audit reads. Only for measuring what auditing costs; never in production.
    pub danger_disable_read_audit: bool,
}

/// The TOML file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    policies_dir: Option<PathBuf>,
    master_key_file: Option<PathBuf>,
    master_key_env: Option<String>,
    max_value_bytes: Option<usize>,
    max_fields: Option<usize>,
    max_message_bytes: Option<usize>,
    max_concurrent_streams: Option<u32>,
    audit_retention_days: Option<u32>,
    audit_checkpoint_every: Option<u64>,
    danger_disable_read_audit: Option<bool>,
}

/// Values from the command line, which win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--policies`.
    pub policies_dir: Option<PathBuf>,
}

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";

impl ConfigFile {
    /// Reads and parses a config file.
    ///
    /// # Errors
    /// A message naming the file and the problem (unknown keys included).
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }
}

impl Config {
    /// Merges the file and the overrides, applies defaults, and validates.
    ///
    /// # Errors
    /// A message naming the setting that is invalid.
    pub fn resolve(file: ConfigFile, over: Overrides) -> Result<Self, String> {
        let listen_text = over
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            format!("listen: {listen_text:?} is not an address like 127.0.0.1:7700")
        })?;
        let data_dir = over
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("strongroom-data"));
        let policies_dir = over
            .policies_dir
            .or(file.policies_dir)
            .unwrap_or_else(|| PathBuf::from("policies"));
        let master_key_file = file
            .master_key_file
            .unwrap_or_else(|| crate::crypto::default_key_path(&data_dir));
        let defaults = Limits::default();
        let limits = Limits {
            max_value_bytes: file.max_value_bytes.unwrap_or(defaults.max_value_bytes),
            max_fields: file.max_fields.unwrap_or(defaults.max_fields),
        };
        let max_message_bytes = file.max_message_bytes.unwrap_or(1 << 20);
        let max_concurrent_streams = file.max_concurrent_streams.unwrap_or(256);
        if !(1..=1 << 20).contains(&limits.max_value_bytes) {
            return Err("max_value_bytes: must be between 1 and 1048576".into());
        }
        if !(1..=10_000).contains(&limits.max_fields) {
            return Err("max_fields: must be between 1 and 10000".into());
        }
        if !(1024..=64 << 20).contains(&max_message_bytes) {
            return Err("max_message_bytes: must be between 1024 and 67108864".into());
        }
        if max_concurrent_streams == 0 {
            return Err("max_concurrent_streams: must be at least 1".into());
        }
        let audit = crate::audit::AuditOptions {
            retention_days: file.audit_retention_days,
            checkpoint_every: file.audit_checkpoint_every.unwrap_or(1000),
        };
        if audit.retention_days == Some(0) || audit.checkpoint_every == 0 {
            return Err(
                "audit_retention_days and audit_checkpoint_every: must be at least 1".into(),
            );
        }
        Ok(Self {
            listen,
            audit,
            danger_disable_read_audit: file.danger_disable_read_audit.unwrap_or(false),
            data_dir,
            policies_dir,
            master_key_file,
            master_key_env: file.master_key_env,
            limits,
            max_message_bytes,
            max_concurrent_streams,
        })
    }

    /// Reads a config file's text with `overrides` (used by tests and bench).
    ///
    /// # Errors
    /// As `resolve`, and TOML errors.
    pub fn from_toml(text: &str, over: Overrides) -> Result<Self, String> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| e.to_string())?;
        Self::resolve(file, over)
    }

    /// The defaults with a data dir, listen address and policies dir (used by tests and bench).
    ///
    /// # Errors
    /// As `resolve`.
    pub fn with(data_dir: &Path, listen: &str, policies_dir: &Path) -> Result<Self, String> {
        Self::resolve(
            ConfigFile::default(),
            Overrides {
                listen: Some(listen.to_owned()),
                data_dir: Some(data_dir.to_owned()),
                policies_dir: Some(policies_dir.to_owned()),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_an_error() {
        let err = toml::from_str::<ConfigFile>("listen = \"127.0.0.1:1\"\nlisten_port = 3\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("listen_port"), "{err}");
    }

    #[test]
    fn flags_win_and_limits_are_checked() {
        let file: ConfigFile =
            toml::from_str("listen = \"127.0.0.1:1\"\nmax_fields = 10\n").unwrap_or_default();
        let over = Overrides {
            listen: Some("127.0.0.1:2".into()),
            ..Overrides::default()
        };
        let config = Config::resolve(file, over).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.listen.port(), 2);
        assert_eq!(config.limits.max_fields, 10);
        let bad: ConfigFile = toml::from_str("max_value_bytes = 0\n").unwrap_or_default();
        assert!(Config::resolve(bad, Overrides::default()).is_err());
    }

    #[test]
    fn fuzz_config_toml() {
        use proptest::prelude::*;
        let valid = (
            any::<u16>(),
            0usize..2_000_000,
            0usize..20_000,
            0usize..100_000_000,
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<bool>(),
        )
            .prop_map(
                |(port, value, fields, message, streams, days, every, danger)| {
                    format!(
                        "listen = \"127.0.0.1:{port}\"\ndata_dir = \"/var/lib/sr\"\n\
                     policies_dir = \"policies\"\nmaster_key_file = \"/etc/sr/key\"\n\
                     master_key_env = \"SR_KEY\"\nmax_value_bytes = {value}\n\
                     max_fields = {fields}\nmax_message_bytes = {message}\n\
                     max_concurrent_streams = {streams}\naudit_retention_days = {days}\n\
                     audit_checkpoint_every = {every}\ndanger_disable_read_audit = {danger}\n"
                    )
                    .into_bytes()
                },
            );
        let dict = &[
            "=",
            "\"",
            "'",
            "'''",
            "\"\"\"",
            "[",
            "]",
            "[[",
            "{",
            "}",
            ",",
            "\n",
            "#",
            "\\u",
            "-",
            "+",
            "inf",
            "nan",
            "1e999",
            "99999999999999999999",
            "0x",
            "true",
            "1979-05-27",
            "[::1]:0",
            "listen",
            ".",
        ];
        crate::testing::fuzz(
            "config TOML",
            256,
            crate::testing::inputs(valid, dict),
            |input| {
                if let Ok(config) = Config::from_toml(&input.text(), Overrides::default()) {
                    // Whatever is accepted is within the documented limits.
                    prop_assert!((1..=1 << 20).contains(&config.limits.max_value_bytes));
                    prop_assert!((1..=10_000).contains(&config.limits.max_fields));
                    prop_assert!(config.max_concurrent_streams >= 1);
                }
                Ok(())
            },
        );
    }
}
