//! The one stand-in in these tests: Firefox Accounts' OAuth server lives on the internet, so a
//! small local HTTP server plays its two endpoints (`GET /v1/jwks`, `POST /v1/verify`) with
//! answers each test sets. Tokens are real RS256 JWTs signed with RSA keys generated here.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpResponse, HttpServer, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};

pub const SYNC_SCOPE: &str = "https://identity.mozilla.com/apps/oldsync";

/// An RSA key as FxA holds one: the private half signs, the public JWK is published.
pub struct Signer {
    key: EncodingKey,
    pub jwk: Value,
}

impl Signer {
    pub fn generate(kid: &str) -> Signer {
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let der = private.to_pkcs1_der().unwrap();
        Signer {
            key: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk: json!({
                "kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
                "n": URL_SAFE_NO_PAD.encode(private.n().to_bytes_be()),
                "e": URL_SAFE_NO_PAD.encode(private.e().to_bytes_be()),
            }),
        }
    }

    /// The process's shared keys (2048-bit generation is slow): 0 and 1 are FxA's current and
    /// next key, 2 is a stranger's.
    pub fn shared(i: usize) -> &'static Signer {
        static KEYS: OnceLock<Vec<Signer>> = OnceLock::new();
        &KEYS.get_or_init(|| {
            (0..3)
                .map(|i| Signer::generate(&format!("key-{i}")))
                .collect()
        })[i]
    }

    pub fn sign(&self, typ: &str, claims: &Value) -> String {
        let header = Header {
            typ: Some(typ.into()),
            kid: self.jwk["kid"].as_str().map(str::to_owned),
            ..Header::new(Algorithm::RS256)
        };
        encode(&header, claims, &self.key).unwrap()
    }

    /// An FxA OAuth access token for `sub` with the Sync scope.
    pub fn access_token(&self, sub: &str, generation: Option<i64>) -> String {
        let mut claims = json!({
            "sub": sub,
            "scope": format!("profile {SYNC_SCOPE}"),
            "exp": unix_now() + 300,
            "iss": "https://accounts.firefox.com",
            "client_id": "5882386c6d801776",
        });
        if let Some(g) = generation {
            claims["fxa-generation"] = json!(g);
        }
        self.sign("at+jwt", &claims)
    }
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// What the stand-in answers, and what it was asked.
pub struct FxaState {
    pub jwks_status: u16,
    pub jwks: Value,
    pub verify_status: u16,
    pub verify_body: Value,
    /// Delay before answering /v1/verify (timeouts).
    pub verify_delay: Duration,
    /// Delay before answering /v1/jwks.
    pub jwks_delay: Duration,
    pub jwks_requests: usize,
    pub verify_requests: Vec<Value>,
}

pub struct FakeFxa {
    pub url: String,
    pub state: Arc<Mutex<FxaState>>,
    handle: actix_web::dev::ServerHandle,
}

impl FakeFxa {
    /// Serves key 0 as the JWKS; /v1/verify answers 401 until a test says otherwise.
    pub fn start() -> FakeFxa {
        let state = Arc::new(Mutex::new(FxaState {
            jwks_status: 200,
            jwks: json!({"keys": [Signer::shared(0).jwk]}),
            verify_status: 401,
            verify_body: json!({"code": 401, "errno": 108, "message": "Invalid token"}),
            verify_delay: Duration::ZERO,
            jwks_delay: Duration::ZERO,
            jwks_requests: 0,
            verify_requests: Vec::new(),
        }));
        let shared = state.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let data = web::Data::new(shared);
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .route("/v1/jwks", web::get().to(jwks))
                        .route("/v1/verify", web::post().to(verify))
                })
                .workers(1)
                .bind(("127.0.0.1", 0))
                .unwrap();
                let port = server.addrs()[0].port();
                let server = server.run();
                tx.send((port, server.handle())).unwrap();
                let _ = server.await;
            })
        });
        let (port, handle) = rx.recv().unwrap();
        FakeFxa {
            url: format!("http://127.0.0.1:{port}"),
            state,
            handle,
        }
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut FxaState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }
}

impl Drop for FakeFxa {
    fn drop(&mut self) {
        std::mem::drop(self.handle.stop(false));
    }
}

type Shared = web::Data<Arc<Mutex<FxaState>>>;

async fn jwks(state: Shared) -> HttpResponse {
    let (status, body, delay) = {
        let mut s = state.lock().unwrap();
        s.jwks_requests += 1;
        (s.jwks_status, s.jwks.clone(), s.jwks_delay)
    };
    if !delay.is_zero() {
        actix_web::rt::time::sleep(delay).await;
    }
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).json(body)
}

async fn verify(state: Shared, body: web::Json<Value>) -> HttpResponse {
    let (status, answer, delay) = {
        let mut s = state.lock().unwrap();
        s.verify_requests.push(body.into_inner());
        (s.verify_status, s.verify_body.clone(), s.verify_delay)
    };
    if !delay.is_zero() {
        actix_web::rt::time::sleep(delay).await;
    }
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).json(answer)
}
