//! The `edgeverify` binary: parse, run, print the error chain, exit with a documented code.

fn main() {
    let code = match edgeverify::cli::main_with_args() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("Error: {err:#}");
            edgeverify::cli::EXIT_ERROR
        }
    };
    std::process::exit(code);
}
