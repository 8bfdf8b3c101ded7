//! Servers on the AMQP port that are not a broker the worker can use, on
//! port 0: a RabbitMQ too old (it sends its `connection.start`, naming a
//! version), and an HTTP server (as the management port 15672 answers).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Stops serving when dropped.
pub struct FakeServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl FakeServer {
    /// `amqp://guest:guest@{addr}/%2f`.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<F, Fut>(answer: F) -> FakeServer
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a fake server");
    let addr = listener.local_addr().expect("its address");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream));
        }
    });
    FakeServer { addr, task }
}

/// A RabbitMQ `version` that says its `connection.start`, then goes no further.
pub async fn old_rabbitmq(version: &str) -> FakeServer {
    let frame = connection_start(version);
    serve(move |mut stream| {
        let frame = frame.clone();
        async move {
            let mut header = [0_u8; 8];
            if stream.read_exact(&mut header).await.is_err() {
                return;
            }
            let _ = stream.write_all(&frame).await;
            // Until the client hangs up.
            let mut sink = [0_u8; 256];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        }
    })
    .await
}

/// An HTTP server: whatever comes, a 400, then it closes.
pub async fn http() -> FakeServer {
    serve(|mut stream| async move {
        let mut request = [0_u8; 8];
        let _ = stream.read(&mut request).await;
        let _ = stream
            .write_all(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
            .await;
        let _ = stream.shutdown().await;
    })
    .await
}

fn long_string(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&u32::try_from(text.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// An AMQP 0-9-1 method frame: `connection.start` with server properties
/// `product` = RabbitMQ and `version`.
pub fn connection_start(version: &str) -> Vec<u8> {
    let mut table = Vec::new();
    for (key, value) in [("product", "RabbitMQ"), ("version", version)] {
        table.push(u8::try_from(key.len()).unwrap_or(u8::MAX));
        table.extend_from_slice(key.as_bytes());
        table.push(b'S');
        long_string(&mut table, value);
    }
    // class 10 (connection), method 10 (start), protocol 0-9.
    let mut payload = vec![0, 10, 0, 10, 0, 9];
    payload.extend_from_slice(&u32::try_from(table.len()).unwrap_or(u32::MAX).to_be_bytes());
    payload.extend_from_slice(&table);
    long_string(&mut payload, "PLAIN AMQPLAIN");
    long_string(&mut payload, "en_US");
    let mut frame = vec![1, 0, 0];
    frame.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    frame.extend_from_slice(&payload);
    frame.push(0xCE);
    frame
}
