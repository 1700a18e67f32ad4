//! `fetchfs completions SHELL` and `fetchfs man [SUBCOMMAND]`: shell completions and roff man
//! pages generated from the clap definitions, so they never drift from the real flags.

use std::io::Write;

use clap::CommandFactory;

use crate::cli::Cli;

/// `fetchfs completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to write completions for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `fetchfs man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Write the page of this subcommand (e.g. `mount`) instead of fetchfs(1).
    #[arg(value_name = "SUBCOMMAND")]
    pub subcommand: Option<String>,
}

/// Writes the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "fetchfs", out);
}

/// Writes the man page of fetchfs (or of one subcommand, as `fetchfs-<sub>(1)`).
pub fn man(subcommand: Option<&str>, out: &mut dyn Write) -> Result<(), String> {
    let mut cmd = Cli::command();
    cmd.build();
    let man = match subcommand {
        None => clap_mangen::Man::new(cmd),
        Some(name) => {
            let names: Vec<String> = cmd.get_subcommands().map(|c| c.get_name().to_string()).collect();
            let sub = cmd
                .find_subcommand(name)
                .ok_or_else(|| format!("no subcommand '{name}' (one of: {})", names.join(", ")))?
                .clone();
            let full = format!("fetchfs-{name}");
            clap_mangen::Man::new(sub.bin_name(format!("fetchfs {name}"))).title(full)
        }
    };
    man.render(out).map_err(|e| format!("cannot write the man page: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_name_the_subcommands_and_flags() {
        let mut buf = Vec::new();
        completions(clap_complete::Shell::Bash, &mut buf);
        let s = String::from_utf8(buf).unwrap();
        assert!(
            s.contains("--metrics-addr") && s.contains("check"),
            "bash completion incomplete"
        );
    }

    #[test]
    fn man_pages_render_as_roff() {
        let mut buf = Vec::new();
        man(None, &mut buf).unwrap();
        let s = String::from_utf8(buf).unwrap();
        assert!(
            s.starts_with(".ie") || s.contains(".TH fetchfs"),
            "{}",
            &s[..200.min(s.len())]
        );
        let mut buf = Vec::new();
        man(Some("mount"), &mut buf).unwrap();
        assert!(String::from_utf8(buf).unwrap().contains("allow\\-other"));
        assert!(man(Some("nope"), &mut Vec::new()).unwrap_err().contains("mount"));
    }
}
