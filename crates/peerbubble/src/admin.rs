//! Running the admin API service (alone, or inside `peerbubble up`).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use peerbubble_admin_api::oidc::{ClientSecretValue, Oidc, OidcConfig};
use peerbubble_admin_api::{ApiState, Store, router, system_clock, token};

/// Admin API settings.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Address of the admin API.
    #[arg(long, env = "PEERBUBBLE_ADMIN_LISTEN", default_value = "127.0.0.1:8481")]
    pub admin_listen: SocketAddr,
    /// Database: `sqlite://path` (default: admin.db in the data dir) or `postgres://...`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where members open invite links (the bubble's web address).
    #[arg(long, env = "PEERBUBBLE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Days audit events are kept.
    #[arg(long, env = "PEERBUBBLE_AUDIT_RETENTION_DAYS", default_value_t = 90)]
    pub audit_retention_days: u32,
    /// OpenID Connect issuer for administrator sign-in. Without it, a bootstrap admin token is printed at start.
    #[arg(long, env = "PEERBUBBLE_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// Client id of the admin API at the provider.
    #[arg(long, env = "PEERBUBBLE_OIDC_CLIENT_ID", default_value = "peerbubble-admin")]
    pub oidc_client_id: String,
    /// Client secret (prefer --oidc-client-secret-file).
    #[arg(long, env = "PEERBUBBLE_OIDC_CLIENT_SECRET", hide_env_values = true)]
    pub oidc_client_secret: Option<String>,
    /// File holding the client secret (a mounted Kubernetes Secret).
    #[arg(long, env = "PEERBUBBLE_OIDC_CLIENT_SECRET_FILE")]
    pub oidc_client_secret_file: Option<std::path::PathBuf>,
    /// Full URL of /auth/callback as registered at the provider (default: http://<admin address>/auth/callback).
    #[arg(long, env = "PEERBUBBLE_OIDC_REDIRECT_URL")]
    pub oidc_redirect_url: Option<String>,
    /// Claim holding the roles (dotted path, e.g. realm_access.roles).
    #[arg(long, env = "PEERBUBBLE_OIDC_ROLES_CLAIM", default_value = "peerbubble_roles")]
    pub oidc_roles_claim: String,
    /// Scopes requested besides openid (comma-separated).
    #[arg(long, env = "PEERBUBBLE_OIDC_SCOPES", default_value = "profile", value_delimiter = ',')]
    pub oidc_scopes: Vec<String>,
    /// Hours an administrator session lasts.
    #[arg(long, env = "PEERBUBBLE_ADMIN_SESSION_HOURS", default_value_t = 8)]
    pub admin_session_hours: u32,
    /// In a cluster: the namespace where each bubble and category created here becomes a Bubble and Category
    /// resource, with the bubble's credential in its `<bubble>-credential` Secret (`{bubble}` stands for the
    /// bubble id, for a namespace per bubble). Uses the pod's ServiceAccount.
    #[cfg(feature = "kubernetes")]
    #[arg(long, env = "PEERBUBBLE_KUBERNETES_NAMESPACE")]
    pub kubernetes_namespace: Option<String>,
    /// In a cluster: the audience of the ServiceAccount tokens bubble-servers present instead of a credential
    /// (checked with a TokenReview; the pod's ServiceAccount must be `<bubble>-bubble` in the bubble's namespace).
    /// No credential Secret is written then. Bubble-servers outside the cluster still present the credential.
    #[cfg(feature = "kubernetes")]
    #[arg(long, env = "PEERBUBBLE_BUBBLE_TOKEN_AUDIENCE", requires = "kubernetes_namespace")]
    pub bubble_token_audience: Option<String>,
    /// In a cluster: what every Bubble made here gets besides its display name, as a Bubble `spec` in JSON in
    /// which `{bubble}` stands for the bubble id, e.g. `{"signaling": {"host": "{bubble}.chat.example.org",
    /// "ingress": {}}}`. With a host, invite links open the bubble's own host (ADR 0033).
    #[cfg(feature = "kubernetes")]
    #[arg(long, env = "PEERBUBBLE_BUBBLE_TEMPLATE", requires = "kubernetes_namespace")]
    pub bubble_template: Option<String>,
}

/// The platform's parts of the admin API: what else happens when bubbles change, and how bubble-servers prove
/// which bubble they serve.
type Platform = (
    Option<Arc<dyn peerbubble_admin_api::control::ControlPlane>>,
    Option<Arc<dyn peerbubble_admin_api::control::BubbleAuthenticator>>,
);

/// The Kubernetes control plane when `--kubernetes-namespace` is given (ADR 0027).
#[cfg(feature = "kubernetes")]
async fn kubernetes(args: &AdminArgs) -> anyhow::Result<Platform> {
    let Some(rule) = &args.kubernetes_namespace else { return Ok((None, None)) };
    let namespaces = peerbubble_control_k8s::Namespaces::new(rule)?;
    // Checked before connecting: a mistake in it is an error at start.
    let template = match args.bubble_template.as_deref().filter(|t| !t.trim().is_empty()) {
        Some(json) => peerbubble_control_k8s::BubbleTemplate::parse(json)?,
        None => peerbubble_control_k8s::BubbleTemplate::default(),
    };
    let mut control = peerbubble_control_k8s::Kubernetes::connect(namespaces).await?.with_template(template);
    tracing::info!(namespace = %rule, "bubbles and categories are applied to Kubernetes");
    let Some(audience) = args.bubble_token_audience.clone().filter(|a| !a.trim().is_empty()) else {
        return Ok((Some(Arc::new(control)), None));
    };
    tracing::info!(%audience, "bubble-servers present ServiceAccount tokens, checked with TokenReview");
    let reviewer = control.token_reviewer(audience);
    control = control.with_service_account_tokens();
    Ok((Some(Arc::new(control)), Some(Arc::new(reviewer))))
}

#[cfg(not(feature = "kubernetes"))]
#[allow(clippy::unused_async)]
async fn kubernetes(_: &AdminArgs) -> anyhow::Result<Platform> {
    Ok((None, None))
}

impl AdminArgs {
    /// The OpenID Connect settings, if an issuer is configured. The callback defaults to the console's origin
    /// when it has one of its own (`peerbubble up` serves `/auth/*` beside the web client), so that a sign-in
    /// started from the console's address comes back to the same host and finds its login cookie.
    fn oidc(&self, admin_addr: SocketAddr, console_origin: Option<&str>) -> anyhow::Result<Option<OidcConfig>> {
        let Some(issuer) = self.oidc_issuer.clone() else { return Ok(None) };
        let secret = match (&self.oidc_client_secret_file, &self.oidc_client_secret) {
            (Some(path), _) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the OIDC client secret from {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            (None, secret) => secret.clone(),
        };
        Ok(Some(OidcConfig {
            issuer,
            client_id: self.oidc_client_id.clone(),
            client_secret: secret.map(ClientSecretValue::new),
            redirect_url: self.oidc_redirect_url.clone().unwrap_or_else(|| match console_origin {
                Some(origin) => format!("{}/auth/callback", origin.trim_end_matches('/')),
                None => format!("http://{admin_addr}/auth/callback"),
            }),
            roles_claim: self.oidc_roles_claim.clone(),
            scopes: self.oidc_scopes.clone(),
            session_secs: i64::from(self.admin_session_hours.max(1)) * 3600,
            after_login: "/admin/".into(),
        }))
    }
}

/// A running admin API.
pub struct RunningAdmin {
    pub addr: SocketAddr,
    /// Administrators sign in with OpenID Connect (no bootstrap token).
    pub oidc: bool,
    /// Printed once; valid until the process stops. None when administrators sign in with OpenID Connect.
    pub bootstrap_token: Option<String>,
    pub store: Store,
    /// The API's routes, for serving them on another listener too (`peerbubble up` puts them beside the web
    /// client, so that the browser enrolls on its own origin).
    pub router: axum::Router,
}

/// Connects the store, starts retention and serves the API. Without an OpenID provider the administrator signs
/// in with a bootstrap token made at each start and printed once; with one, there is no bootstrap token.
pub async fn start(
    args: &AdminArgs,
    default_db: String,
    public_url: String,
    console_origin: Option<&str>,
    control: Option<Arc<dyn peerbubble_admin_api::control::ControlPlane>>,
) -> anyhow::Result<RunningAdmin> {
    let url = args.database_url.clone().unwrap_or(default_db);
    let store = Store::connect(&url).await.context("cannot open the admin database")?;
    let listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.admin_listen))?;
    let addr = listener.local_addr()?;
    let oidc = args.oidc(addr, console_origin)?;
    let bootstrap_token = match oidc {
        Some(_) => None,
        None => Some(token::random_token().map_err(|e| anyhow::anyhow!("no randomness: {e}"))?),
    };
    let clock = system_clock();
    peerbubble_admin_api::retention::spawn(store.clone(), clock.clone(), args.audit_retention_days);
    let mut state = ApiState::new(
        store.clone(),
        bootstrap_token.as_deref().map(token::hash_token),
        args.public_url.clone().unwrap_or(public_url),
        clock,
    );
    state.audit_retention_days = args.audit_retention_days;
    #[cfg(feature = "kubernetes")]
    if control.is_some() && args.kubernetes_namespace.is_some() {
        anyhow::bail!("--kubernetes-namespace is for the admin API in a cluster, not for `peerbubble up`");
    }
    let (cluster, bubble_auth) = match control {
        Some(control) => (Some(control), None),
        None => kubernetes(args).await?,
    };
    if let Some(control) = cluster {
        state.control = control;
    }
    if let Some(bubble_auth) = bubble_auth {
        state.bubble_auth = bubble_auth;
    }
    state.session_secs = i64::from(args.admin_session_hours.max(1)) * 3600;
    if let Some(config) = oidc {
        tracing::info!(issuer = %config.issuer, "administrators sign in with OpenID Connect");
        state.oidc = Some(Arc::new(Oidc::new(config)?));
    }
    let state = Arc::new(state);
    // The console beside the API it calls: same origin, so its session cookie is SameSite=Strict and it needs no CORS.
    let api = router(state).merge(peerbubble_web_assets::console_router());
    let served = api.clone();
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, served).await {
            tracing::error!(error = %err, "admin API stopped");
        }
    });
    tracing::info!(%addr, "admin API listening");
    Ok(RunningAdmin { addr, oidc: bootstrap_token.is_none(), bootstrap_token, store, router: api })
}
