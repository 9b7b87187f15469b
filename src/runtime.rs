//! What a reload replaces, as one value: the runtime built from the reloadable part of
//! the configuration. The listener's requests, the worker's expansions, CodePipeline
//! jobs, supersede and reconcile all read the one [`Current`]; a reload builds a whole
//! new [`Runtime`] and swaps it in at once, so nothing ever sees half of one
//! configuration and half of the next. Whatever reads it works to its end with the
//! runtime it loaded first.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, SurfaceNetworks};
use crate::lanes::LaneRules;
use crate::plan::Planner;
use crate::source::codecommit::CodeCommitSource;
use crate::source::github::GithubSecrets;
use crate::source::manual::ManualSource;

/// Why a configuration does not make a runtime (it is then refused whole).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot set up CodeCommit deliveries")]
    CodeCommit(#[from] crate::source::codecommit::https::ClientError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// The reloadable part of the configuration, compiled.
pub struct Runtime {
    /// Routes and pipelines.
    pub planner: Arc<Planner>,
    /// Which serial pipelines supersede, and their projects' skip flags.
    pub lane_rules: LaneRules,
    /// GitHub's webhook secrets, with their repository scopes.
    pub github: GithubSecrets,
    /// CodeCommit's endpoint, when `[codecommit]` is configured.
    pub codecommit: Option<Arc<CodeCommitSource>>,
    /// Who may call the operator surface; `None` when `[api]` has no token.
    pub manual: Option<ManualSource>,
    /// Where each surface takes requests from (empty: anywhere).
    pub networks: SurfaceNetworks,
    /// The listener's certificate, when it serves HTTPS: read again on every reload.
    pub tls: Option<Arc<TlsAcceptor>>,
}

impl Runtime {
    /// The runtime `config` makes with `planner` (compiled from it). `previous` is the
    /// one it replaces: HTTPS is turned on or off only by a restart, so the certificate
    /// is read again only when the listener started with one (and kept when the new
    /// configuration drops `[server.tls]`).
    pub fn build(
        config: &Config,
        planner: Arc<Planner>,
        previous: Option<&Runtime>,
    ) -> Result<Runtime, RuntimeError> {
        let codecommit = match &config.codecommit {
            Some(codecommit) => Some(Arc::new(CodeCommitSource::new(codecommit)?)),
            None => None,
        };
        let read = |tls| crate::tls::acceptor(tls).map(Arc::new);
        let tls = match (previous, &config.server.tls) {
            (None, Some(tls)) => Some(read(tls)?),
            (None, None) => None,
            (Some(previous), _) if previous.tls.is_none() => None,
            (Some(_), Some(tls)) => Some(read(tls)?),
            (Some(previous), None) => previous.tls.clone(),
        };
        Ok(Runtime {
            planner,
            lane_rules: LaneRules::from_config(config),
            github: GithubSecrets::from_config(config),
            codecommit,
            manual: ManualSource::from_config(&config.api),
            networks: config.typed.networks.clone(),
            tls,
        })
    }
}

/// The runtime in force, shared by everything that reads it.
#[derive(Clone)]
pub struct Current(Arc<ArcSwap<Runtime>>);

impl Current {
    pub fn new(runtime: Runtime) -> Current {
        Current(Arc::new(ArcSwap::from_pointee(runtime)))
    }

    /// The runtime now, for a short read.
    pub fn load(&self) -> Guard<Arc<Runtime>> {
        self.0.load()
    }

    /// The runtime now, to keep across awaits.
    pub fn load_full(&self) -> Arc<Runtime> {
        self.0.load_full()
    }

    /// Puts `runtime` in force; readers that loaded the previous one keep it.
    pub fn replace(&self, runtime: Runtime) {
        self.0.store(Arc::new(runtime));
    }
}
