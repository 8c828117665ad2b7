//! The server under faults, load and shutdown: health follows the certificate source, calls in
//! flight at shutdown complete, a burst of calls leaves it responsive, and upstream faults end
//! every call with a clean status within its deadline.

use aasp::cli::serve::{self, BackendArgs};
use aasp::emulator::faults::Faults;
use aasp::proto::attestation_agent::{
    attestation_agent_service_client::AttestationAgentServiceClient, GetEvidenceRequest,
    GetTokenRequest,
};
use aasp::proto::keyprovider::{
    key_provider_service_client::KeyProviderServiceClient, HelloRequest,
};
use aasp::service::Listen;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

struct Setup {
    emulator: aasp::emulator::Running,
    server: serve::Running,
    _dir: tempfile::TempDir,
}

/// aasp serve (simulator attester, THIM at the emulator) with the emulator's faults set first.
async fn setup(faults: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let sim = aasp::snp::sim::Simulated::open(&aasp::snp::sim::SimOptions {
        state_dir: dir.path().into(),
        ..Default::default()
    })
    .unwrap();
    let mut config = aasp::emulator::Config::new(dir.path().into());
    config.extra_roots = aasp::snp::attester::Attester::simulated_root(&sim)
        .into_iter()
        .collect();
    config.thim_json = Some(sim.thim_json());
    config.accepted_measurements = vec![sim.measurement()];
    config.faults = faults.parse().unwrap();
    let emulator = aasp::emulator::start(config).await.unwrap();
    let backend = BackendArgs::for_emulator(&emulator.url, &emulator.ca_path, dir.path(), None)
        .build()
        .unwrap();
    let server = serve::start(backend, &[Listen::Tcp("127.0.0.1:0".parse().unwrap())])
        .await
        .unwrap();
    Setup {
        emulator,
        server,
        _dir: dir,
    }
}

async fn channel(s: &Setup) -> Channel {
    Channel::from_shared(format!("http://{}", s.server.listeners[0]))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn health(s: &Setup) -> ServingStatus {
    let reply = HealthClient::new(channel(s).await)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    ServingStatus::try_from(reply.into_inner().status).unwrap()
}

async fn wait_for(s: &Setup, wanted: ServingStatus, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if health(s).await == wanted {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn health_stays_not_serving_while_the_chain_source_is_down_and_recovers() {
    let s = setup("status=503").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(health(&s).await, ServingStatus::NotServing);
    s.emulator.set_faults(Faults::default());
    assert!(
        wait_for(&s, ServingStatus::Serving, Duration::from_secs(20)).await,
        "health never recovered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_faults_end_calls_cleanly_within_the_deadline_and_recovery_needs_no_restart() {
    let s = setup("").await;
    assert!(wait_for(&s, ServingStatus::Serving, Duration::from_secs(10)).await);
    let mut agent = AttestationAgentServiceClient::new(channel(&s).await);
    for (faults, expected) in [
        ("status=503", tonic::Code::Unavailable),
        ("status=429", tonic::Code::Unavailable),
        ("drop", tonic::Code::Unavailable),
        ("malformed", tonic::Code::Unavailable),
        ("status=400", tonic::Code::PermissionDenied),
    ] {
        s.emulator.set_faults(faults.parse().unwrap());
        let started = Instant::now();
        // Transient faults are retried until the caller's deadline: give one of a few seconds.
        let mut request = tonic::Request::new(GetTokenRequest {
            token_type: "maa".into(),
        });
        request.set_timeout(Duration::from_secs(3));
        let status = agent.get_token(request).await.expect_err(faults);
        assert_eq!(status.code(), expected, "{faults}: {status:?}");
        assert!(started.elapsed() < aasp::service::RPC_DEADLINE, "{faults}");
    }
    // The server itself enforces the caller's grpc-timeout: a raw HTTP/2 request (no client-side
    // timer) gets DEADLINE_EXCEEDED (4) back while the upstream is still stalling.
    s.emulator.set_faults("latency=3000ms".parse().unwrap());
    let mut frame = vec![0u8];
    let message = prost::Message::encode_to_vec(&GetTokenRequest {
        token_type: "maa".into(),
    });
    frame.extend((message.len() as u32).to_be_bytes());
    frame.extend(message);
    let started = Instant::now();
    let response = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
        .post(format!(
            "http://{}/attestation_agent.AttestationAgentService/GetToken",
            s.server.listeners[0]
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "500m")
        .body(frame)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned()),
        Some("4".into())
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "ended at its deadline, not when the upstream answered"
    );
    s.emulator.set_faults(Faults::default());
    agent
        .get_token(GetTokenRequest {
            token_type: "maa".into(),
        })
        .await
        .expect("recovered without a restart");

    // A truncated gRPC frame (the prefix promises 100 bytes, 3 arrive) ends in a clean error
    // status, and the server keeps serving.
    let response = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
        .post(format!(
            "http://{}/keyprovider.KeyProviderService/SayHello",
            s.server.listeners[0]
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(vec![0u8, 0, 0, 0, 100, 1, 2, 3])
        .send()
        .await
        .unwrap();
    let status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    assert!(
        matches!(status.as_deref(), Some(s) if s != "0"),
        "a truncated message must not succeed: {status:?}"
    );
    assert_eq!(health(&s).await, ServingStatus::Serving);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_leaves_the_server_responsive_and_shutdown_finishes_calls_in_flight() {
    let s = setup("").await;
    assert!(wait_for(&s, ServingStatus::Serving, Duration::from_secs(10)).await);
    let ch = channel(&s).await;
    let burst: Vec<_> = (0..64)
        .map(|i| {
            let mut client = KeyProviderServiceClient::new(ch.clone());
            tokio::spawn(async move {
                for j in 0..40 {
                    client
                        .say_hello(HelloRequest {
                            name: format!("{i}-{j}"),
                        })
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in burst {
        task.await.unwrap();
    }
    let started = Instant::now();
    assert_eq!(health(&s).await, ServingStatus::Serving);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "still responsive after 2560 calls"
    );

    // Calls in flight when shutdown begins complete.
    let in_flight: Vec<_> = (0..16)
        .map(|i| {
            let mut client = AttestationAgentServiceClient::new(ch.clone());
            tokio::spawn(async move {
                client
                    .get_evidence(GetEvidenceRequest {
                        runtime_data: vec![i],
                    })
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let Setup { server, .. } = s;
    let shutdown = tokio::spawn(server.shutdown(Duration::from_secs(10)));
    for call in in_flight {
        let reply = call
            .await
            .unwrap()
            .expect("an in-flight call was lost at shutdown");
        assert!(!reply.into_inner().evidence.is_empty());
    }
    shutdown.await.unwrap();
}
