//! One replica of the service in a process of its own, for tests that kill it for real (`kill -9`):
//! `datastorage serve` as the binary runs it (configuration from `DATASTORAGE_*` variables, JSON
//! logs on stdout, the `listening` line naming its addresses), built with the tests so that they
//! can start it without depending on the binary of another package.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match ds_server::config::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("replica: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    ds_server::telemetry::init_logging(&config, std::io::stdout);
    ds_embed_openai::install_tls_provider();
    match ds_server::serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replica: {e:#}");
            ExitCode::FAILURE
        }
    }
}
