//! The environment every binary reads its `DFS_*` settings from: a variable set but empty
//! (`DFS_TOKEN_FILE=` in a shell profile, an unset variable expanded in a unit file) is taken
//! as unset, as a user expects, rather than as an empty value that a flag refuses.

/// Removes every `DFS_*` variable whose value is empty from the process's environment. Call it
/// first thing in `main`, before any thread starts and before the arguments are parsed.
pub fn forget_empty_settings() {
    let empty: Vec<std::ffi::OsString> = std::env::vars_os()
        .filter(|(name, value)| value.is_empty() && name.to_str().is_some_and(|n| n.starts_with("DFS_")))
        .map(|(name, _)| name)
        .collect();
    for name in empty {
        std::env::remove_var(&name);
        assert!(std::env::var_os(&name).is_none(), "{name:?} was removed");
    }
}
