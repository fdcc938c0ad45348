//! The real Kubernetes API server and the project-local tools, as fixtures.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use crate::{cache_dir, unique_name};

const START_ONE: &str = "run the tests through `scripts/test`, or start the control plane with \
     `scripts/kube up` (and export the KUBECONFIG it prints)";

/// A handle on the API server the tests run against.
#[derive(Clone)]
pub struct TestKube {
    /// A client authenticated as the cluster admin.
    pub client: Client,
    /// The kubeconfig file the client was built from (for `kubectl --kubeconfig`).
    pub kubeconfig: PathBuf,
}

impl std::fmt::Debug for TestKube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKube")
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

impl TestKube {
    /// The API server named by `KUBECONFIG`, or else the one `scripts/kube up` runs.
    ///
    /// Panics when there is neither or when it does not answer: a test never passes by skipping.
    pub async fn connect() -> Self {
        let kubeconfig = std::env::var_os("KUBECONFIG")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                let path = cache_dir()?.join("kube-run/kubeconfig");
                path.exists().then_some(path)
            })
            .unwrap_or_else(|| panic!("no Kubernetes API server for the tests: {START_ONE}"));
        let file = Kubeconfig::read_from(&kubeconfig)
            .unwrap_or_else(|e| panic!("reading {}: {e}\n{START_ONE}", kubeconfig.display()));
        let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
            .await
            .unwrap_or_else(|e| panic!("loading {}: {e}", kubeconfig.display()));
        let client = Client::try_from(config).expect("building a Kubernetes client");
        if let Err(e) = client.apiserver_version().await {
            panic!(
                "the API server in {} does not answer: {e}\n{START_ONE}",
                kubeconfig.display()
            );
        }
        Self { client, kubeconfig }
    }

    /// Creates a namespace with a unique name starting with `prefix` and returns the name.
    pub async fn namespace(&self, prefix: &str) -> String {
        let name = unique_name(prefix);
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("creating test namespace {name}: {e}"));
        name
    }

    /// Deletes a namespace (and so everything in it); the API server finishes in the background.
    pub async fn delete_namespace(&self, name: &str) {
        Api::<Namespace>::all(self.client.clone())
            .delete(name, &DeleteParams::background())
            .await
            .unwrap_or_else(|e| panic!("deleting test namespace {name}: {e}"));
    }

    /// `kubectl --kubeconfig <this server's kubeconfig>`, ready for more arguments.
    pub fn kubectl(&self) -> std::process::Command {
        let mut command = std::process::Command::new(tool("kubectl"));
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        command
    }
}

/// The path of a tool `scripts/tools` installs (`kubectl`, `helm`, `k6`, `kcat`).
///
/// Panics with what to run when the tool is not there.
pub fn tool(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../.local/bin")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `scripts/tools` (scripts/test does)",
        path.display()
    );
    path
}
