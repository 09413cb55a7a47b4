//! What operators and tools meet besides the broker API: the standard health
//! service, server reflection (what `grpcurl` uses), the subscription limit,
//! and settings from the environment and a config file.

use std::time::Duration;

use postbox_proto::v1 as pb;
use postbox_tests::broker::BrokerProcess;
use postbox_tests::wait::wait_until;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

/// How long a subscription's slot may take to free once its subscriber left.
const SLOT_TIMEOUT: Duration = Duration::from_secs(5);

fn broker(extra_args: &[&str]) -> (tempfile::TempDir, BrokerProcess) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let broker = BrokerProcess::start(&dir.path().join("data"), extra_args);
    (dir, broker)
}

#[tokio::test(flavor = "multi_thread")]
async fn health_reports_serving_and_reflection_lists_the_services() {
    let (_dir, broker) = broker(&[]);
    let channel = tonic::transport::Endpoint::from_shared(broker.url())
        .expect("a URL")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "postbox.v1.Broker"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("a reflection response")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("a list of services: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["postbox.v1.Broker", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_past_the_limit_are_resource_exhausted_until_one_ends() {
    let (_dir, broker) = broker(&["--max-subscriptions", "1"]);
    let mut client = broker.client().await;
    client
        .create_topic(pb::CreateTopicRequest {
            name: "t".into(),
            ..Default::default()
        })
        .await
        .expect("create");
    let follow = || pb::SubscribeRequest {
        topic: "t".into(),
        follow: true,
        ..Default::default()
    };
    let first = client
        .subscribe(follow())
        .await
        .expect("the first subscription");
    let refused = client
        .subscribe(follow())
        .await
        .expect_err("the second is over the limit");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("max_subscriptions"),
        "{}",
        refused.message()
    );
    drop(first);
    // The first subscription's task notices its subscriber left.
    wait_until(
        SLOT_TIMEOUT,
        async || match client.subscribe(follow()).await {
            Ok(_) => true,
            Err(status) if status.code() == tonic::Code::ResourceExhausted => false,
            Err(status) => panic!("a slot frees when a subscriber leaves: {status:?}"),
        },
        || "a slot frees when a subscriber leaves: still over the limit".to_owned(),
    )
    .await;
}

#[test]
fn settings_come_from_the_environment_and_a_config_file_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("broker.toml");
    std::fs::write(&config, "max_subscriptions = 0\n").expect("write the config");
    let out = std::process::Command::new(postbox_tests::bin("postbox-broker"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("POSTBOX_CONFIG", &config)
        .output()
        .expect("run the broker");
    assert!(
        !out.status.success(),
        "a zero limit from the file is refused"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_subscriptions"), "{stderr}");

    std::fs::write(&config, "max_subscriptons = 5\n").expect("write the config");
    let out = std::process::Command::new(postbox_tests::bin("postbox-broker"))
        .env("POSTBOX_CONFIG", &config)
        .env("POSTBOX_DATA_DIR", dir.path().join("data"))
        .output()
        .expect("run the broker");
    assert!(!out.status.success(), "a misspelt setting is refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("max_subscriptons"),
        "names the unknown setting: {stderr}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing was created before the settings were checked"
    );
}
