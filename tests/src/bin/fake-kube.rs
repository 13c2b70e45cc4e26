//! The fake Kubernetes API server of the tests (TokenReview, SubjectAccessReview) in a process of its
//! own, for `cargo xtask conformance`: the service under test authenticates for real.
//!
//! It knows one token, `conformance-token`, of a caller allowed everything the API has (writes,
//! reads, legal holds), prints `kubeconfig <path>` once it listens, and runs until its standard input
//! closes.

#![allow(clippy::print_stdout)] // a program whose output is read by xtask

use ds_tests::kube_server::{FakeKubeApi, TokenInfo};
use std::io::Read;
use std::process::ExitCode;

/// The bearer token the conformance run sends.
const TOKEN: &str = "conformance-token";
const CALLER: &str = "system:serviceaccount:kubernaut:conformance";

#[actix_web::main]
async fn main() -> ExitCode {
    let kube = match FakeKubeApi::start().await {
        Ok(k) => k,
        Err(e) => {
            eprintln!("fake-kube: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    kube.add_token(
        TOKEN,
        TokenInfo {
            username: CALLER.to_owned(),
            groups: vec!["system:serviceaccounts".to_owned()],
            audiences: Vec::new(),
            expired: false,
        },
    );
    for verb in [
        "create",
        "get",
        "legalholds/create",
        "legalholds/delete",
        "legalholds/list",
    ] {
        kube.allow(CALLER, verb);
    }
    println!("kubeconfig {}", kube.kubeconfig.display());
    // Until the parent closes our standard input (or exits).
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await;
    kube.stop().await;
    ExitCode::SUCCESS
}
