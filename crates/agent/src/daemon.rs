//! `shoal daemon`: runs a [`Node`] and serves its API on the unix socket
//! until SIGTERM or SIGINT; then stops its tasks, or with live restore
//! leaves them running for the next daemon to adopt.

use anyhow::{Context, ensure};
use tokio::signal::unix::{SignalKind, signal};

use crate::node::Node;
use crate::settings::Settings;

/// Runs the node agent until SIGTERM or SIGINT.
pub fn run(settings: Settings) -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "shoal daemon creates namespaces and TUN devices and needs root"
    );
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("create data directory {}", settings.data_dir.display()))?;
    let ring = settings.gossip_key_file.as_deref().map(crate::keys::read_file).transpose()?;
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    runtime.block_on(async {
        let node = Node::start(settings, ring).await?;
        let socket = &node.settings.socket;
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let _ = std::fs::remove_file(socket); // a previous run's
        let listener = tokio::net::UnixListener::bind(socket)
            .with_context(|| format!("listen on {}", socket.display()))?;
        std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .with_context(|| format!("restrict {}", socket.display()))?;
        tracing::info!(
            node = %node.me.id, epoch = node.me.epoch, gossip = %node.me.addr, socket = %socket.display(),
            "daemon ready"
        );
        let api = tokio::spawn(crate::api::serve(listener, node.clone()));
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        api.abort();
        if node.settings.live_restore && node.task_runner().is_ok() {
            // The tasks stay; the next daemon adopts them. Exit at once:
            // no destructor may stop what they hold.
            tracing::info!("stopping; tasks keep running (live restore)");
            node.release().await;
            let _ = std::fs::remove_file(&node.settings.socket);
            std::process::exit(0);
        }
        tracing::info!("stopping");
        node.shutdown().await;
        let _ = std::fs::remove_file(&node.settings.socket);
        Ok(())
    })
}
