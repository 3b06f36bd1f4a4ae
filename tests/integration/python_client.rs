//! A standard Open Inference Protocol client (Triton's `tritonclient.http`),
//! unchanged, against a running server: metadata, readiness, JSON and
//! binary infer, checked against Python onnxruntime on the same inputs.
//! Needs `.venv` (scripts/setup-test-env.sh, run by scripts/test.sh).

use std::process::Command;

use crate::common::{project_root, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_http_client_works_unchanged_in_json_and_binary_mode() {
    let python = project_root().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} missing: run scripts/setup-test-env.sh (scripts/test.sh does)",
        python.display()
    );
    let s = TestServer::shipped().await;
    let url = s.public.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(project_root().join("tests/python/oip_client.py"))
            .args([
                "--url",
                &url,
                "--models",
                &project_root().join("models").display().to_string(),
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("checked"), "{stdout}");
}
