fn main() -> std::process::ExitCode {
    aasp::cli::main()
}
