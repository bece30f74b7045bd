//! A frame tap between members and the aggregator: it terminates the
//! members' QUIC+TLS with the aggregator's certificate, dials the real
//! aggregator with each member's own certificate, relays frames both ways
//! unchanged, and keeps a copy of every frame a member sent, exactly as it
//! left the member's codec (before TLS encryption). Tests use it to inspect
//! the bytes that leave a site without any hook in the member's code.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tessera_core::{HEADER_LEN, PROTOCOL_VERSION};
use tessera_transport::{AdmitAll, FrameReceiver, FrameSender, QuicDialConfig, QuicListenerConfig};

/// Frames as (member, bytes), in the order each member sent them.
pub type TapLog = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Frames sent by members, in the order each member sent them.
#[derive(Clone, Default)]
pub struct Tapped(TapLog);

impl Tapped {
    /// The complete frames (`[version][len][payload]`) `member` sent.
    pub fn frames_of(&self, member: &str) -> Vec<Vec<u8>> {
        self.0.lock().unwrap().iter().filter(|(m, _)| m == member).map(|(_, f)| f.clone()).collect()
    }

    pub fn total_frames(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

pub struct FrameTap {
    /// Where members should dial.
    pub addr: String,
    pub tapped: Tapped,
}

/// Start a tap in front of the aggregator at `upstream`; `pki_dir` holds the
/// aggregator's and the members' certificates (the test's own consortium).
pub fn start_tap(pki_dir: &Path, upstream: String) -> FrameTap {
    let cfg = QuicListenerConfig::from_pki_dir(pki_dir, "127.0.0.1:0".parse().unwrap()).unwrap();
    let mut listener = cfg.listen(Arc::new(AdmitAll)).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let tapped = Tapped::default();
    let keep = tapped.clone();
    let pki: PathBuf = pki_dir.to_path_buf();
    tokio::spawn(async move {
        while let Some((peer, down)) = listener.accept().await {
            let mut dial = QuicDialConfig::from_pki_dir(&pki, &peer.member, upstream.clone()).unwrap();
            dial.server_name = Some("localhost".into());
            let keep = keep.clone();
            tokio::spawn(async move {
                let Ok(up) = tessera_transport::connect(&dial).await else {
                    down.close(tessera_transport::close_code::REFUSED, "upstream refused");
                    return;
                };
                let (down_tx, down_rx) = down.split();
                let (up_tx, up_rx) = up.split();
                let member = peer.member.clone();
                let to_aggregator = tokio::spawn(pump(down_rx, up_tx, Some((member, keep))));
                let to_member = tokio::spawn(pump(up_rx, down_tx, None));
                let _ = tokio::join!(to_aggregator, to_member);
            });
        }
    });
    FrameTap { addr, tapped }
}

/// Copy frames from `rx` to `tx` until either side ends; record them if asked.
async fn pump(mut rx: FrameReceiver, mut tx: FrameSender, record: Option<(String, Tapped)>) {
    loop {
        match rx.recv().await {
            Ok(Some(payload)) => {
                let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
                frame.push(PROTOCOL_VERSION);
                frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                payload.chunks().iter().for_each(|c| frame.extend_from_slice(c));
                if let Some((member, tapped)) = &record {
                    tapped.0.lock().unwrap().push((member.clone(), frame.clone()));
                }
                if tx.send(frame).await.is_err() {
                    rx.close(tessera_transport::close_code::NORMAL, "relay: other side gone");
                    return;
                }
            }
            Ok(None) => {
                let _ = tx.finish().await;
                return;
            }
            Err(_) => {
                tx.close(tessera_transport::close_code::NORMAL, "relay: other side gone");
                return;
            }
        }
    }
}
