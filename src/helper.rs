//! mount(8) helper: `mount -t fuse.fetchfs CONFIG MOUNTPOINT -o OPTS` and fstab lines such as
//! `/etc/fetchfs/media.toml /mnt/media fuse.fetchfs ro,_netdev,nofail,allow_other 0 0`.
//!
//! mount(8) runs `/sbin/mount.fuse.fetchfs SOURCE MOUNTPOINT [-o OPTS] [-n] [-s] [-f] [-v]`
//! (`mount.fetchfs` for `-t fetchfs`), with an empty environment (no `PATH`, no `HOME`). When
//! the binary is started under one of those names (a symlink to it), or as `fetchfs
//! mount-helper ...`, [`effective_args`] rewrites that into `fetchfs mount --config SOURCE
//! MOUNTPOINT -o OPTS` (or `fetchfs mount URL MOUNTPOINT -o OPTS` when SOURCE is a URL), which
//! then runs as usual: it detaches and returns once the mount answers, so mount(8) and systemd
//! see a finished mount. The `-o` options are checked by `MountArgs::to_config` like any
//! other, except `rw`, which mount(8) adds by itself when fstab gives no `ro`, and is dropped.

use std::ffi::{OsStr, OsString};
use std::path::Path;

/// Names under which the binary acts as mount(8)'s helper.
pub const HELPER_NAMES: [&str; 2] = ["mount.fuse.fetchfs", "mount.fetchfs"];

/// The subcommand with the same behaviour, for systems where a symlink is not wanted.
pub const HELPER_SUBCOMMAND: &str = "mount-helper";

/// The arguments `fetchfs` should parse, given its own `argv`: unchanged, or the translated
/// `fetchfs mount ...` of a helper invocation. `Ok(None)`: nothing to do (`-f`, a fake mount).
pub fn effective_args(argv: Vec<OsString>) -> Result<Option<Vec<OsString>>, String> {
    let name = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(OsStr::to_str)
        .unwrap_or("");
    if HELPER_NAMES.contains(&name) {
        return translate(&argv[1..]);
    }
    if argv.get(1).map(OsString::as_os_str) == Some(OsStr::new(HELPER_SUBCOMMAND)) {
        if argv.len() == 2 || argv[2..].iter().any(|a| a == "-h" || a == "--help") {
            // Let clap print the subcommand's help.
            return Ok(Some(argv));
        }
        return translate(&argv[2..]);
    }
    Ok(Some(argv))
}

/// `SOURCE MOUNTPOINT [-o OPTS]... [-n] [-s] [-f] [-v]` → `fetchfs mount ...`.
pub fn translate(args: &[OsString]) -> Result<Option<Vec<OsString>>, String> {
    let mut positional: Vec<OsString> = Vec::new();
    let mut options: Vec<String> = Vec::new();
    let mut fake = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        match s.as_ref() {
            "-o" => {
                let v = it.next().ok_or("mount helper: -o needs a value")?;
                options.push(v.to_string_lossy().into_owned());
            }
            // -n: do not write /etc/mtab; -s: sloppy; -v: verbose. Nothing to do for any.
            "-n" | "-s" | "-v" => {}
            "-f" => fake = true,
            // Mount namespace and type (util-linux and mount.fuse forms): already decided.
            "-N" | "-t" => {
                it.next();
            }
            o if o.starts_with("-o") => options.push(o[2..].to_string()),
            o if o.starts_with('-') && o.len() > 1 => {
                return Err(format!(
                    "mount helper: unknown flag '{o}' (usage: mount.fuse.fetchfs CONFIG|URL MOUNTPOINT [-o OPTIONS])"
                ));
            }
            _ => positional.push(a.clone()),
        }
    }
    let [source, mountpoint] = <[OsString; 2]>::try_from(positional).map_err(|p| {
        format!(
            "mount helper: expected CONFIG|URL MOUNTPOINT, got {} argument(s) (usage: mount.fuse.fetchfs CONFIG|URL MOUNTPOINT [-o OPTIONS])",
            p.len()
        )
    })?;
    if fake {
        return Ok(None);
    }
    let opts: Vec<&str> = options
        .iter()
        .flat_map(|o| o.split(','))
        .map(str::trim)
        // mount(8) passes `rw` when fstab says nothing; the mount is read-only regardless.
        .filter(|o| !o.is_empty() && *o != "rw")
        .collect();
    let mut out: Vec<OsString> = vec!["fetchfs".into(), "mount".into()];
    if source.to_string_lossy().contains("://") {
        out.push(source);
    } else {
        out.push("--config".into());
        out.push(source);
    }
    out.push(mountpoint);
    if !opts.is_empty() {
        out.push("-o".into());
        out.push(opts.join(",").into());
    }
    Ok(Some(out))
}

/// `fetchfs mount-helper` as clap shows it in `--help` (the arguments are translated by
/// [`effective_args`] before clap parses them).
#[derive(Debug, clap::Args)]
pub struct MountHelperArgs {
    /// `CONFIG|URL MOUNTPOINT [-o OPTIONS] [-n] [-s] [-f] [-v]`, as mount(8) passes them.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn fstab_invocation_becomes_mount_with_config_and_options() {
        let got = effective_args(os(&[
            "/sbin/mount.fuse.fetchfs",
            "/etc/fetchfs/media.toml",
            "/mnt/media",
            "-o",
            "rw,_netdev,nofail,allow_other,uid=1000",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            got,
            os(&[
                "fetchfs",
                "mount",
                "--config",
                "/etc/fetchfs/media.toml",
                "/mnt/media",
                "-o",
                "_netdev,nofail,allow_other,uid=1000"
            ])
        );
    }

    #[test]
    fn url_source_and_subcommand_form_mount_the_url() {
        let got = effective_args(os(&["fetchfs", "mount-helper", "http://h/x/", "/mnt/x", "-n", "-oro"]))
            .unwrap()
            .unwrap();
        assert_eq!(got, os(&["fetchfs", "mount", "http://h/x/", "/mnt/x", "-o", "ro"]));
        let got = effective_args(os(&["mount.fetchfs", "https://h/", "/m", "-o", "rw"]))
            .unwrap()
            .unwrap();
        assert_eq!(got, os(&["fetchfs", "mount", "https://h/", "/m"]));
    }

    #[test]
    fn fake_mount_does_nothing_and_bad_usage_is_one_sentence() {
        assert!(translate(&os(&["/c.toml", "/m", "-f"])).unwrap().is_none());
        assert!(translate(&os(&["/c.toml"])).unwrap_err().contains("MOUNTPOINT"));
        assert!(translate(&os(&["/c.toml", "/m", "-x"])).unwrap_err().contains("-x"));
        assert!(translate(&os(&["/c.toml", "/m", "-o"])).unwrap_err().contains("-o"));
    }

    #[test]
    fn ordinary_invocations_are_left_alone() {
        let argv = os(&["fetchfs", "mount", "http://h/", "/m"]);
        assert_eq!(effective_args(argv.clone()).unwrap().unwrap(), argv);
    }
}
