//! Every flag, argument and subcommand explains itself in `--help`.

/// Every argument and subcommand in `cmd`'s tree without a help line, as
/// `"<command path> <argument id>"` or `"<command path>"` (for a
/// subcommand with no `about`). Built-in `--help`/`--version` have help.
pub fn missing_help(cmd: &clap::Command) -> Vec<String> {
    let mut out = Vec::new();
    walk(cmd, cmd.get_name(), &mut out);
    out
}

/// For each binary's unit test: panics (naming them) unless clap's own
/// consistency checks pass and every argument and subcommand has help.
pub fn assert_complete_help(cmd: &clap::Command) {
    cmd.clone().debug_assert();
    assert_eq!(missing_help(cmd), Vec::<String>::new(), "arguments or subcommands without a help line");
}

fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
    for arg in cmd.get_arguments() {
        if arg.get_help().is_none() && arg.get_long_help().is_none() {
            out.push(format!("{path} {}", arg.get_id()));
        }
    }
    for sub in cmd.get_subcommands() {
        let sub_path = format!("{path} {}", sub.get_name());
        if sub.get_about().is_none() && sub.get_long_about().is_none() {
            out.push(sub_path.clone());
        }
        walk(sub, &sub_path, out);
    }
}

#[cfg(test)]
mod tests {
    use super::missing_help;
    use clap::{Arg, Command};

    #[test]
    fn names_each_undocumented_arg_and_subcommand() {
        let cmd = Command::new("tool")
            .arg(Arg::new("ok").long("ok").help("documented"))
            .subcommand(Command::new("bare").arg(Arg::new("quiet").long("quiet")))
            .subcommand(Command::new("fine").about("documented"));
        assert_eq!(missing_help(&cmd), ["tool bare", "tool bare quiet"]);
    }
}
