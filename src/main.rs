//! `imagersync_service_bin`: everything lives in the library; see [`imagersync::cli`].

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    imagersync::cli::run(std::env::args_os()).await
}
