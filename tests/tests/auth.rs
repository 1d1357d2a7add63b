//! Authentication: clients need an access key when the engine has one; engine and nodes prove
//! the cluster secret to each other by challenge-response, which a replayed handshake cannot
//! pass; and nothing listens beyond loopback without them unless told to.

use dfs_proto::auth::{ClusterSecret, AUTH_CLUSTER};
use dfs_proto::io_std::{read_frame, write_msg, Frame};
use dfs_proto::{Chunking, Hello, Msg, Role, Status};
use dfs_tests::{assert_bytes_eq, bin, pseudo_random_bytes, raw_connect, Cluster, ClusterOpts};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn secured() -> ClusterOpts {
    ClusterOpts { access_key: true, cluster_secret: true, ..ClusterOpts::default() }
}

#[test]
fn a_client_without_the_right_access_key_is_refused() {
    let cluster = Cluster::start(4, secured());
    let data = pseudo_random_bytes(1, 300_000);
    let id = cluster.put_bytes(&data, "secret", Chunking::Equal);
    let got = cluster.get(&id).unwrap_or_else(|e| panic!("get {id} with the key: {e}"));
    assert_bytes_eq(&got, &data, "a file put and read with the access key");

    let input = cluster.write_input(&data);
    let addr = cluster.engine_addr().to_string();
    let wrong = "f".repeat(64);
    let cases: [(&str, Vec<&str>); 3] = [
        ("no key", vec![]),
        ("a wrong key", vec!["--token", wrong.as_str()]),
        ("a truncated key", vec!["--token", "abc"]),
    ];
    for (what, key_args) in cases {
        for op in [vec!["ls"], vec!["stat", id.as_str()], vec!["put", input.to_str().expect("utf-8 path")]] {
            let out = Command::new(bin("dfs-client"))
                .args(["--server", addr.as_str()])
                .args(&key_args)
                .args(&op)
                .env_remove("DFS_TOKEN_FILE")
                .env_remove("DFS_TOKEN")
                .stdin(Stdio::null())
                .output()
                .expect("run dfs-client");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{op:?} with {what}: exit status {:?}, stderr {stderr}", out.status);
            assert!(stderr.starts_with("error: ") && stderr.lines().count() == 1, "{op:?} with {what}: {stderr}");
            assert!(stderr.contains("unauthorized") && stderr.contains("access key"), "{op:?} with {what}: {stderr}");
            assert!(out.stdout.is_empty(), "{op:?} with {what} printed {:?}", String::from_utf8_lossy(&out.stdout));
        }
    }
    assert_eq!(cluster.ls().len(), 1, "refused clients must not have stored anything");
}

/// A capture of the client's traffic (a recording forwarder in front of the engine) holds the
/// file's bytes, as it must while traffic is not encrypted, but never the access key: the key is
/// proved by challenge and response. Replaying the client's side of a captured handshake on a
/// new connection is refused, since the engine's nonce differs.
#[test]
fn the_access_key_never_crosses_the_wire_and_a_captured_handshake_cannot_be_replayed() {
    let cluster = Cluster::start(4, secured());
    let key_file = cluster.root().join("access.key");
    let key = std::fs::read_to_string(&key_file).expect("read the access key").trim().to_string();
    let tap = dfs_tests::Tap::start(cluster.engine_addr());
    let data = pseudo_random_bytes(7, 200_000);
    let input = cluster.write_input(&data);
    let client = |args: &[&str]| {
        let out = Command::new(bin("dfs-client"))
            .args(["--server", tap.addr.as_str()])
            .args(args)
            .env("DFS_TOKEN_FILE", &key_file)
            .env_remove("DFS_TOKEN")
            .stdin(Stdio::null())
            .output()
            .expect("run dfs-client");
        assert!(out.status.success(), "{args:?} through the tap: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let id = String::from_utf8(client(&["put", input.to_str().expect("utf-8 path"), "--name", "tapped"]))
        .expect("utf-8 file ID")
        .trim()
        .to_string();
    let got = client(&["get", id.as_str(), "-o", "-"]);
    assert_bytes_eq(&got, &data, "a file put and read through the tap");
    client(&["ls"]);
    let captured = tap.captured();
    assert_eq!(captured.len(), 3, "one connection per client run");
    let all: Vec<u8> = captured.iter().flat_map(|(sent, got)| [sent.as_slice(), got.as_slice()].concat()).collect();
    // The capture sees what crosses the wire: the file, both ways (so a key in it would show).
    assert!(dfs_tests::contains_bytes(&all, &data[100_000..100_064]), "the capture holds no file bytes");
    assert!(!dfs_tests::contains_bytes(&all, key.as_bytes()), "the access key crossed the wire");
    assert!(!dfs_tests::contains_bytes(&all, &key.as_bytes()[..16]), "part of the access key crossed the wire");
    // The client's side of the `ls` handshake (Hello, then KeyProof), replayed.
    let (sent, _) = &captured[2];
    let mut s = raw_connect(cluster.engine_addr());
    use std::io::Write;
    s.write_all(sent).expect("replay the client's bytes");
    let mut answers = Vec::new();
    loop {
        match read_frame(&mut s) {
            Ok(Frame::Msg(Msg::KeyChallenge { .. })) => answers.push("challenge"),
            Ok(Frame::Msg(Msg::Error { status: Status::Unauthorized, .. })) => answers.push("unauthorized"),
            Ok(other) => panic!("a replayed handshake was answered {other:?}"),
            Err(_) => break,
        }
    }
    assert_eq!(answers, ["challenge", "unauthorized"], "a replayed handshake must be refused");
}

/// A client does not prove its key to an engine that cannot prove it holds the same key: an
/// impostor's challenge is refused with one clear line, and no proof is sent.
#[test]
fn a_client_refuses_an_engine_that_cannot_prove_the_key() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the impostor");
    let addr = listener.local_addr().expect("its address").to_string();
    let impostor = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("the client connects");
        s.set_read_timeout(Some(Duration::from_secs(20))).expect("set a read timeout");
        match read_frame(&mut s) {
            Ok(Frame::Msg(Msg::Hello(h))) => assert_eq!(h.auth_method, dfs_proto::auth::AUTH_KEY_PROOF, "{h:?}"),
            other => panic!("expected the client's Hello, got {other:?}"),
        }
        write_msg(&mut s, &Msg::KeyChallenge { nonce: [9; 32], proof: [0; 32] }).expect("send the challenge");
        // Whatever the client sends next (nothing, it closes): no KeyProof.
        read_frame(&mut s)
    });
    let out = Command::new(bin("dfs-client"))
        .args(["--server", addr.as_str(), "--token", &"a".repeat(64), "ls"])
        .env_remove("DFS_TOKEN_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("run dfs-client");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit status {:?}, stderr {stderr}", out.status);
    assert!(stderr.starts_with("error: ") && stderr.lines().count() == 1, "{stderr}");
    assert!(stderr.contains("could not prove that it holds this access key"), "{stderr}");
    let next = impostor.join().expect("the impostor thread");
    assert!(
        !matches!(next, Ok(Frame::Msg(Msg::KeyProof { .. }))),
        "the client proved its key to an impostor: {next:?}"
    );
}

/// Opens a raw engine connection to a node and sends Hello with `auth_method` and `auth`.
fn hello_to_node(addr: &str, auth_method: u8, auth: Vec<u8>) -> std::net::TcpStream {
    let mut s = raw_connect(addr);
    let hello = Hello { auth_method, auth, ..Hello::new(Role::Engine) };
    write_msg(&mut s, &Msg::Hello(hello)).expect("send Hello");
    s
}

fn expect_unauthorized(s: &mut std::net::TcpStream, what: &str) {
    match read_frame(s) {
        Ok(Frame::Msg(Msg::Error { status: Status::Unauthorized, .. })) => {}
        other => panic!("{what}: expected an unauthorized error, got {other:?}"),
    }
    assert!(read_frame(s).is_err(), "{what}: the node must close the connection after refusing");
}

#[test]
fn nodes_serve_only_an_engine_that_proves_the_cluster_secret_and_refuse_a_replay() {
    let cluster = Cluster::start(4, secured());
    let data = pseudo_random_bytes(2, 3 << 20);
    let id = cluster.put_bytes(&data, "behind the secret", Chunking::Equal);
    assert_bytes_eq(
        &cluster.get(&id).unwrap_or_else(|e| panic!("get {id}: {e}")),
        &data,
        "a file in a secured cluster",
    );
    let node = cluster.node_addr(0).to_string();
    let secret = ClusterSecret::from_file(&cluster.cluster_secret_path().expect("secret path")).expect("read secret");

    // No secret at all.
    let mut s = hello_to_node(&node, 0, Vec::new());
    expect_unauthorized(&mut s, "Hello without authentication");

    // The right handshake works.
    let engine_nonce = [7u8; 32];
    let mut s = hello_to_node(&node, AUTH_CLUSTER, engine_nonce.to_vec());
    let (node_nonce, node_id, node_proof) = match read_frame(&mut s) {
        Ok(Frame::Msg(Msg::AuthChallenge { nonce, node_id, proof })) => (nonce, node_id, proof),
        other => panic!("expected AuthChallenge, got {other:?}"),
    };
    assert!(secret.check_node(&engine_nonce, &node_nonce, &node_id, &node_proof), "the node's proof must verify");
    let mut other_id = node_id;
    other_id.0[0] ^= 1;
    assert!(!secret.check_node(&engine_nonce, &node_nonce, &other_id, &node_proof), "the proof binds the node ID");
    let engine_proof = secret.engine_proof(&engine_nonce, &node_nonce);
    write_msg(&mut s, &Msg::AuthProof { proof: engine_proof }).expect("send proof");
    match read_frame(&mut s) {
        Ok(Frame::Msg(Msg::HelloOk(h))) => assert_eq!(h.node_id, Some(node_id), "HelloOk names the proven ID"),
        other => panic!("the right proof must be accepted, got {other:?}"),
    }
    write_msg(&mut s, &Msg::NodeStat).expect("send NodeStat");
    assert!(matches!(read_frame(&mut s), Ok(Frame::Msg(Msg::NodeStatOk(_)))), "an authenticated engine is served");

    // Replaying the same Hello and the recorded proof fails: the node's nonce is fresh.
    let mut s = hello_to_node(&node, AUTH_CLUSTER, engine_nonce.to_vec());
    let fresh = match read_frame(&mut s) {
        Ok(Frame::Msg(Msg::AuthChallenge { nonce, .. })) => nonce,
        other => panic!("expected AuthChallenge, got {other:?}"),
    };
    assert_ne!(fresh, node_nonce, "the node reused its nonce");
    write_msg(&mut s, &Msg::AuthProof { proof: engine_proof }).expect("send replayed proof");
    expect_unauthorized(&mut s, "a replayed proof");

    // A proof made with another secret fails.
    let mut s = hello_to_node(&node, AUTH_CLUSTER, engine_nonce.to_vec());
    let n = match read_frame(&mut s) {
        Ok(Frame::Msg(Msg::AuthChallenge { nonce, .. })) => nonce,
        other => panic!("expected AuthChallenge, got {other:?}"),
    };
    let other_path = cluster.root().join("other.secret");
    dfs_tests::write_secret_file(&other_path);
    let other = ClusterSecret::from_file(&other_path).expect("read other secret");
    write_msg(&mut s, &Msg::AuthProof { proof: other.engine_proof(&engine_nonce, &n) }).expect("send proof");
    expect_unauthorized(&mut s, "a proof under another secret");
}

#[test]
fn an_engine_with_a_secret_refuses_nodes_that_cannot_prove_it() {
    // Nodes without a secret; the engine has one, so it must not trust them.
    let mut cluster = Cluster::start_nodes(4);
    let secret = cluster.root().join("engine.secret");
    dfs_tests::write_secret_file(&secret);
    let mut cmd = Command::new(bin("dfs-engine"));
    cmd.args(["--listen", "127.0.0.1:0", "--meta"]).arg(cluster.root().join("meta"));
    cmd.arg("--cluster-secret-file").arg(&secret);
    for addr in cluster.node_addrs() {
        cmd.args(["--node", &addr]);
    }
    cluster.adopt_engine(cmd);
    let out = cluster
        .try_put_bytes(&pseudo_random_bytes(3, 1000), "to untrusted nodes", Chunking::Equal)
        .err()
        .unwrap_or_else(|| panic!("an upload went to nodes that did not prove the cluster secret"));
    let line = out.expect_error("put to nodes without the secret");
    assert!(line.contains("cluster secret"), "the error should say the nodes lack the cluster secret: {line:?}");
}

/// Runs a server binary that should refuse to start, and returns its stderr.
fn refused_start(cmd: &mut Command, what: &str) -> String {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
    // Not `dfs_tests::wait_for`: a server that did not refuse must be killed before the panic,
    // or it would outlive the test listening beyond loopback.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut stderr).expect("read stderr");
            assert_eq!(status.code(), Some(1), "{what}: exit status {status}, stderr {stderr}");
            return stderr;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what}: still running after 20 s; it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn nothing_listens_beyond_loopback_without_secrets_unless_told_to() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let stderr = refused_start(
        Command::new(bin("dfs-node")).args(["--listen", "0.0.0.0:0", "--data"]).arg(root.join("n")),
        "a node on 0.0.0.0 without a secret",
    );
    assert!(stderr.contains("refusing to listen") && stderr.contains("--cluster-secret-file"), "{stderr}");

    let mut engine = Command::new(bin("dfs-engine"));
    engine.args(["--listen", "0.0.0.0:0", "--meta"]).arg(root.join("meta"));
    for port in 1..=4 {
        engine.args(["--node", &format!("127.0.0.1:{port}")]);
    }
    let stderr = refused_start(&mut engine, "an engine on 0.0.0.0 without keys");
    assert!(stderr.contains("refusing to listen") && stderr.contains("--token-file"), "{stderr}");

    // A secret file others can read is refused too.
    let loose = root.join("loose.secret");
    std::fs::write(&loose, "a".repeat(64)).expect("write");
    let stderr = refused_start(
        Command::new(bin("dfs-node"))
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(root.join("n2"))
            .arg("--cluster-secret-file")
            .arg(&loose),
        "a node with a world-readable secret file",
    );
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(Path::new(&loose).exists());
}
