//! A stand-in for the few ARI calls a call's setup and teardown make, so the real actor system
//! runs without Asterisk: the events WebSocket (we push StasisStart / StasisEnd for synthetic
//! callers), `POST /channels/externalMedia` (answers a UnicastRTP channel whose
//! `UNICASTRTP_LOCAL_ADDRESS:PORT` is the load generator's socket for that caller, and notes
//! the service's port from `external_host`), bridges, addChannel, answer and the deletes.
//!
//! It runs on its own thread ("fake-ari") with its own actix System, so its CPU time is not
//! counted as the service's. It is idle while media is measured.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use rtpvisor_actors::naming;

/// The fake ARI server; stops when dropped or [`FakeAri::stop`]ped.
pub struct FakeAri {
    /// Base URL as the service wants it (`http://127.0.0.1:PORT/ari`).
    pub url: String,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    join: Option<thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    app: String,
    /// Caller id -> the address Asterisk would send the call's RTP from (a generator socket).
    peers: Mutex<HashMap<String, SocketAddr>>,
    /// Caller id -> the service's port for the call (`external_host` of externalMedia).
    media: Mutex<HashMap<String, SocketAddr>>,
    /// Caller id -> when its setup's last request (answer) arrived.
    answered_at: Mutex<HashMap<String, Instant>>,
    /// Callers in Stasis (StasisStart sent, not yet hung up): what GET /channels lists, so a
    /// reconciliation after a reconnect finds the calls alive.
    live_callers: Mutex<HashSet<String>>,
    caller_hangups: AtomicU64,
    requests: AtomicU64,
    unexpected: AtomicU64,
    ws: Mutex<Option<mpsc::UnboundedSender<String>>>,
    ws_connects: AtomicU64,
}

type Data = web::Data<Arc<Shared>>;

impl FakeAri {
    /// Starts the server on a free port of 127.0.0.1 for Stasis application `app`.
    pub fn start(app: &str) -> io::Result<FakeAri> {
        let shared = Arc::new(Shared { app: app.to_string(), ..Default::default() });
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std_mpsc::channel::<io::Result<SocketAddr>>();
        let data = web::Data::new(shared.clone());
        let join = thread::Builder::new().name("fake-ari".into()).spawn(move || {
            actix_rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .route("/ari/events", web::get().to(events))
                        .route("/ari/channels/externalMedia", web::post().to(external_media))
                        .route("/ari/channels/{id}/answer", web::post().to(answer))
                        .route("/ari/channels/{id}", web::delete().to(delete_channel))
                        .route("/ari/bridges", web::post().to(create_bridge))
                        .route("/ari/bridges/{id}/addChannel", web::post().to(no_content))
                        .route("/ari/bridges/{id}", web::delete().to(no_content))
                        .route("/ari/applications/{name}", web::get().to(application))
                        .route("/ari/channels", web::get().to(list_channels))
                        .route("/ari/bridges", web::get().to(list_bridges))
                        .default_service(web::to(unexpected))
                })
                .workers(1)
                .disable_signals()
                .bind(("127.0.0.1", 0));
                let server = match server {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = addr_tx.send(Err(e));
                        return;
                    }
                };
                let _ = addr_tx.send(Ok(server.addrs()[0]));
                let server = server.run();
                let handle = server.handle();
                actix_rt::spawn(server);
                let _ = stop_rx.await;
                handle.stop(false).await;
            });
        })?;
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| io::Error::other("fake ARI did not start"))??;
        Ok(FakeAri { url: format!("http://{addr}/ari"), shared, stop: Some(stop_tx), join: Some(join) })
    }

    /// The Asterisk-side address of each caller's externalMedia channel.
    pub fn set_peers(&self, peers: impl IntoIterator<Item = (String, SocketAddr)>) {
        self.shared.peers.lock().expect("not poisoned").extend(peers);
    }

    /// True once the service's events WebSocket is connected (waits up to `limit`).
    pub fn wait_connected(&self, limit: Duration) -> bool {
        wait_for(limit, || self.shared.ws.lock().expect("not poisoned").is_some())
    }

    fn send_event(&self, ev: serde_json::Value) -> bool {
        match self.shared.ws.lock().expect("not poisoned").as_ref() {
            Some(tx) => tx.send(ev.to_string()).is_ok(),
            None => false,
        }
    }

    /// A caller enters our Stasis app with `args` (e.g. `["echo"]`), in state `Ring`.
    pub fn stasis_start(&self, caller: &str, args: &[&str]) -> bool {
        self.shared.live_callers.lock().expect("not poisoned").insert(caller.to_string());
        self.send_event(json!({
            "type": "StasisStart",
            "application": self.shared.app,
            "timestamp": "2026-01-01T00:00:00.000+0000",
            "args": args,
            "channel": caller_channel(caller, "Ring"),
            "asterisk_id": "00:00:00:00:00:00",
        }))
    }

    /// The caller leaves Stasis (hung up): the service tears the call down.
    pub fn stasis_end(&self, caller: &str) -> bool {
        self.send_event(json!({
            "type": "StasisEnd",
            "application": self.shared.app,
            "timestamp": "2026-01-01T00:00:00.000+0000",
            "channel": caller_channel(caller, "Up"),
            "asterisk_id": "00:00:00:00:00:00",
        }))
    }

    /// The service's address for `caller`'s media, once it asked for externalMedia.
    pub fn media_target(&self, caller: &str) -> Option<SocketAddr> {
        self.shared.media.lock().expect("not poisoned").get(caller).copied()
    }

    pub fn answered(&self) -> usize {
        self.shared.answered_at.lock().expect("not poisoned").len()
    }

    pub fn caller_hangups(&self) -> u64 {
        self.shared.caller_hangups.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    pub fn unexpected(&self) -> u64 {
        self.shared.unexpected.load(Ordering::Relaxed)
    }

    pub fn ws_connects(&self) -> u64 {
        self.shared.ws_connects.load(Ordering::Relaxed)
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for FakeAri {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Polls `f` every 10 ms for at most `limit`.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    f()
}

fn caller_channel(id: &str, state: &str) -> serde_json::Value {
    json!({
        "id": id,
        "name": format!("PJSIP/{id}"),
        "state": state,
        "protocol_id": "",
        "caller": {"name": "", "number": id},
        "connected": {"name": "", "number": ""},
        "accountcode": "",
        "dialplan": {"context": "from-sip", "exten": "100", "priority": 1,
                     "app_name": "Stasis", "app_data": "rtpvisor,echo"},
        "creationtime": "2026-01-01T00:00:00.000+0000",
        "language": "en",
    })
}

async fn events(req: HttpRequest, body: web::Payload, st: Data) -> Result<HttpResponse, actix_web::Error> {
    st.requests.fetch_add(1, Ordering::Relaxed);
    let (resp, mut session, mut incoming) = actix_ws::handle(&req, body)?;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    *st.ws.lock().expect("not poisoned") = Some(tx);
    st.ws_connects.fetch_add(1, Ordering::Relaxed);
    actix_rt::spawn(async move {
        // Ends when the bench drops the sender or the service closes the socket.
        loop {
            tokio::select! {
                out = rx.recv() => match out {
                    Some(text) => {
                        if session.text(text).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                inc = incoming.next() => match inc {
                    Some(Ok(actix_ws::Message::Ping(p))) => {
                        let _ = session.pong(&p).await;
                    }
                    Some(Ok(actix_ws::Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
            }
        }
        let _ = session.close(None).await;
    });
    Ok(resp)
}

async fn external_media(q: web::Query<HashMap<String, String>>, st: Data) -> HttpResponse {
    st.requests.fetch_add(1, Ordering::Relaxed);
    let em_id = q.get("channelId").cloned().unwrap_or_default();
    let caller = naming::parse(&em_id).map_or(em_id.as_str(), |o| o.caller).to_string();
    let Some(peer) = st.peers.lock().expect("not poisoned").get(&caller).copied() else {
        st.unexpected.fetch_add(1, Ordering::Relaxed);
        return HttpResponse::NotFound().json(json!({"message": format!("no such caller {caller}")}));
    };
    if let Some(target) = q.get("external_host").and_then(|h| h.parse::<SocketAddr>().ok()) {
        st.media.lock().expect("not poisoned").insert(caller.clone(), target);
    }
    debug_assert_eq!(em_id, naming::external_media_id(&st.app, &caller));
    HttpResponse::Ok().json(json!({
        "id": em_id,
        "name": format!("UnicastRTP/{}-0x0", q.get("external_host").cloned().unwrap_or_default()),
        "state": "Down",
        "protocol_id": "",
        "caller": {"name": "", "number": ""},
        "connected": {"name": "", "number": ""},
        "accountcode": "",
        "dialplan": {"context": "default", "exten": "s", "priority": 1, "app_name": "", "app_data": ""},
        "creationtime": "2026-01-01T00:00:00.000+0000",
        "language": "en",
        "channelvars": {
            "UNICASTRTP_LOCAL_ADDRESS": peer.ip().to_string(),
            "UNICASTRTP_LOCAL_PORT": peer.port().to_string(),
        },
    }))
}

async fn create_bridge(q: web::Query<HashMap<String, String>>, st: Data) -> HttpResponse {
    st.requests.fetch_add(1, Ordering::Relaxed);
    let id = q.get("bridgeId").cloned().unwrap_or_default();
    HttpResponse::Ok().json(json!({
        "id": id,
        "technology": "simple_bridge",
        "bridge_type": "mixing",
        "bridge_class": "stasis",
        "creator": "Stasis",
        "name": q.get("name").cloned().unwrap_or_default(),
        "channels": [],
    }))
}

async fn answer(path: web::Path<String>, st: Data) -> HttpResponse {
    st.requests.fetch_add(1, Ordering::Relaxed);
    st.answered_at.lock().expect("not poisoned").insert(path.into_inner(), Instant::now());
    HttpResponse::NoContent().finish()
}

async fn delete_channel(path: web::Path<String>, st: Data) -> HttpResponse {
    st.requests.fetch_add(1, Ordering::Relaxed);
    let id = path.into_inner();
    if !id.starts_with(naming::MEDIA_CHANNEL_PREFIX) {
        st.live_callers.lock().expect("not poisoned").remove(&id);
        st.caller_hangups.fetch_add(1, Ordering::Relaxed);
    }
    HttpResponse::NoContent().finish()
}

async fn no_content(st: Data) -> HttpResponse {
    st.requests.fetch_add(1, Ordering::Relaxed);
    HttpResponse::NoContent().finish()
}

fn live_callers(st: &Shared) -> Vec<String> {
    let mut v: Vec<String> = st.live_callers.lock().expect("not poisoned").iter().cloned().collect();
    v.sort();
    v
}

async fn application(path: web::Path<String>, st: Data) -> HttpResponse {
    st.requests.fetch_add(1, Ordering::Relaxed);
    let callers = live_callers(&st);
    let bridges: Vec<String> = callers.iter().map(|c| naming::bridge_id(&st.app, c)).collect();
    let mut channels = callers.clone();
    channels.extend(callers.iter().map(|c| naming::external_media_id(&st.app, c)));
    HttpResponse::Ok().json(json!({
        "name": path.into_inner(), "channel_ids": channels, "bridge_ids": bridges,
        "endpoint_ids": [], "device_names": [],
    }))
}

async fn list_channels(st: Data) -> HttpResponse {
    st.requests.fetch_add(1, Ordering::Relaxed);
    let callers = live_callers(&st);
    let mut v: Vec<serde_json::Value> = callers.iter().map(|c| caller_channel(c, "Up")).collect();
    v.extend(callers.iter().map(|c| {
        let mut em = caller_channel(&naming::external_media_id(&st.app, c), "Up");
        em["name"] = json!(format!("UnicastRTP/{c}"));
        em
    }));
    HttpResponse::Ok().json(v)
}

async fn list_bridges(st: Data) -> HttpResponse {
    st.requests.fetch_add(1, Ordering::Relaxed);
    let v: Vec<serde_json::Value> = live_callers(&st)
        .iter()
        .map(|c| {
            let br = naming::bridge_id(&st.app, c);
            json!({"id": br, "technology": "simple_bridge", "bridge_type": "mixing",
                   "bridge_class": "stasis", "creator": "Stasis", "name": br,
                   "channels": [c, naming::external_media_id(&st.app, c)]})
        })
        .collect();
    HttpResponse::Ok().json(v)
}

async fn unexpected(req: HttpRequest, st: Data) -> HttpResponse {
    st.requests.fetch_add(1, Ordering::Relaxed);
    st.unexpected.fetch_add(1, Ordering::Relaxed);
    log::warn!("fake ARI: unexpected {} {}", req.method(), req.uri());
    HttpResponse::NotFound().json(json!({"message": "not in the fake"}))
}

