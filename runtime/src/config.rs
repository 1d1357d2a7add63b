//! `--config FILE`: engine and node settings from a TOML file, as an alternative to flags. Each
//! key is a long option's name (`chunk_size_max` or `chunk-size-max`), its value a string,
//! number or boolean, or an array for a repeatable option (`node = ["10.0.0.1:7701", ...]`).
//! The file's settings become command-line arguments placed before the real ones; an option
//! given on the command line replaces the file's value (for a repeatable option, the whole
//! list). Unknown keys are refused, naming the file.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

/// Why the settings of `--config FILE` cannot be used. Every variant but the first names the
/// file; the causes (an I/O error, a TOML syntax error) are left to `source()`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--config needs a FILE")]
    MissingPath,
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("config file {} is not valid TOML", path.display())]
    Toml {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("config file {}: unknown setting {key:?}", path.display())]
    UnknownSetting { path: PathBuf, key: String },
    /// A table, a date or the like, which no option takes.
    #[error("config file {}: {key} = {value} is not a supported value", path.display())]
    UnsupportedValue { path: PathBuf, key: String, value: toml::Value },
    /// A string or number given to an option that takes no value.
    #[error("config file {}: {key} is a switch; give it true or false", path.display())]
    NotASwitchValue { path: PathBuf, key: String },
}

/// The process's arguments with the settings of its `--config FILE` (if any) put in front.
pub fn args_with_config(cmd: &clap::Command) -> Result<Vec<OsString>, ConfigError> {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let mut config_path = None;
    for (i, arg) in argv.iter().enumerate() {
        let Some(arg) = arg.to_str() else { continue };
        if arg == "--config" {
            config_path = Some(argv.get(i + 1).ok_or(ConfigError::MissingPath)?.clone());
        } else if let Some(path) = arg.strip_prefix("--config=") {
            config_path = Some(path.into());
        }
    }
    let Some(path) = config_path else { return Ok(argv) };
    let on_command_line: Vec<String> = argv
        .iter()
        .filter_map(|a| a.to_str())
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a).to_string())
        .collect();
    let from_file = config_args(Path::new(&path), cmd, &on_command_line)?;
    let mut out = Vec::with_capacity(argv.len() + from_file.len());
    out.extend(argv.first().cloned());
    out.extend(from_file);
    out.extend(argv.into_iter().skip(1));
    Ok(out)
}

/// The arguments a config file stands for, leaving out options in `skip`.
fn config_args(path: &Path, cmd: &clap::Command, skip: &[String]) -> Result<Vec<OsString>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    let table: toml::Table = text.parse().map_err(|source| ConfigError::Toml { path: path.into(), source })?;
    let mut out = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
            .filter(|_| long != "config" && long != "help" && long != "version")
            .ok_or_else(|| ConfigError::UnknownSetting { path: path.into(), key: key.clone() })?;
        if skip.contains(&long) {
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        let values: Vec<&toml::Value> = match &value {
            toml::Value::Array(items) => items.iter().collect(),
            one => vec![one],
        };
        for v in values {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) if !takes_value => {
                    if *b {
                        out.push(format!("--{long}").into());
                    }
                    continue;
                }
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(ConfigError::UnsupportedValue {
                        path: path.into(),
                        key: key.clone(),
                        value: other.clone(),
                    })
                }
            };
            if !takes_value {
                return Err(ConfigError::NotASwitchValue { path: path.into(), key: key.clone() });
            }
            out.push(format!("--{long}").into());
            out.push(text.into());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction, Command};

    fn cmd() -> Command {
        Command::new("t")
            .arg(Arg::new("listen").long("listen"))
            .arg(Arg::new("node").long("node").action(ArgAction::Append))
            .arg(Arg::new("chunk-size-max").long("chunk-size-max"))
            .arg(Arg::new("insecure").long("insecure").action(ArgAction::SetTrue))
            .arg(Arg::new("config").long("config"))
    }

    fn args_of(toml: &str, skip: &[&str]) -> Result<Vec<String>, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).expect("write");
        let skip: Vec<String> = skip.iter().map(|s| s.to_string()).collect();
        config_args(&path, &cmd(), &skip).map(|v| v.into_iter().map(|s| s.into_string().expect("utf-8")).collect())
    }

    #[test]
    fn settings_become_arguments_and_the_command_line_wins() {
        let got = args_of(
            "listen = \"0.0.0.0:1\"\nchunk_size_max = \"8MiB\"\nnode = [\"a:1\", \"b:2\"]\ninsecure = true\n",
            &["listen"],
        )
        .expect("valid config");
        assert_eq!(got, ["--chunk-size-max", "8MiB", "--insecure", "--node", "a:1", "--node", "b:2"]);
        assert_eq!(args_of("insecure = false\n", &[]).expect("valid"), Vec::<String>::new());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let refused = |toml: &str| args_of(toml, &[]).expect_err(toml);
        let e = refused("lisen = \"x\"\n");
        assert!(matches!(&e, ConfigError::UnknownSetting { key, .. } if key == "lisen"), "{e:?}");
        assert!(e.to_string().contains("unknown setting \"lisen\"") && e.to_string().contains("c.toml"), "{e}");
        let e = refused("config = \"other.toml\"\n");
        assert!(matches!(e, ConfigError::UnknownSetting { .. }) && e.to_string().contains("unknown setting"), "{e}");
        let e = refused("insecure = \"yes\"\n");
        assert!(matches!(e, ConfigError::NotASwitchValue { .. }) && e.to_string().contains("switch"), "{e}");
        let e = refused("listen = {a = 1}\n");
        assert!(matches!(e, ConfigError::UnsupportedValue { .. }), "{e:?}");
        assert!(e.to_string().contains("not a supported value"), "{e}");
        let e = refused("listen = \n");
        assert!(matches!(e, ConfigError::Toml { .. }) && e.to_string().contains("not valid TOML"), "{e}");
        assert!(std::error::Error::source(&e).is_some(), "the TOML error is kept as the cause");
    }

    #[test]
    fn a_missing_file_keeps_its_io_error_kind() {
        let missing = Path::new("/nonexistent/dfs-config.toml");
        let e = config_args(missing, &cmd(), &[]).expect_err("a missing file");
        assert!(matches!(&e, ConfigError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound), "{e:?}");
        assert_eq!(e.to_string(), "cannot read config file /nonexistent/dfs-config.toml");
    }
}
