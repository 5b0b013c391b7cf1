//! `learner`: trains an agent; see `learner --help`. Re-executed with a hidden first argument,
//! the same binary is an actor process.

fn main() -> std::process::ExitCode {
    async_rl::cli::learner_main()
}
