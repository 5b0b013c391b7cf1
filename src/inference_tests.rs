use super::*;
use crate::config::Network;
use crate::shm::segment_name;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// A network with libtorch's random initialisation and a copy of it.
fn twins(net: Network, obs: ObsSpec, actions: usize) -> (AgentNetwork, AgentNetwork) {
    tch::manual_seed(3);
    let a = AgentNetwork::new(net, obs, actions, Device::Cpu);
    let mut b = AgentNetwork::new(net, obs, actions, Device::Cpu);
    b.copy_from(&a);
    (a, b)
}

/// Random observations of `obs`: frames of bytes, or vectors of f32 in [-1, 1].
fn random_obs(obs: ObsSpec, rows: usize, rng: &mut StdRng) -> Vec<u8> {
    match obs {
        ObsSpec::Frames(_) => (0..rows * obs.bytes()).map(|_| rng.gen()).collect(),
        ObsSpec::Vector(n) => (0..rows * n)
            .flat_map(|_| rng.gen_range(-1f32..1.0).to_ne_bytes())
            .collect(),
    }
}

fn server(
    tag: &str,
    model: AgentNetwork,
    obs: ObsSpec,
    slots: usize,
    rows: usize,
    batching: Batching,
) -> (InferenceServer, String) {
    let name = segment_name(&format!("test-server-{tag}"));
    let width = model.act_width();
    let s = InferenceSlots::create(&name, slots, rows, obs.bytes(), width).unwrap();
    (
        InferenceServer::start(s, model, obs, batching).unwrap(),
        name,
    )
}

/// Each of `actors` threads asks once for the outputs of its `rows` observations; returns
/// (observations, outputs, version, seconds waited) per actor.
fn ask_once(
    name: &str,
    obs: ObsSpec,
    width: usize,
    actors: usize,
    rows: usize,
) -> Vec<(Vec<u8>, Vec<f32>, u32, f64)> {
    let handles: Vec<_> = (0..actors)
        .map(|slot| {
            let name = name.to_string();
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(slot as u64);
                let o = random_obs(obs, rows, &mut rng);
                let mut p = ServedPolicy::open(&name, slot).unwrap();
                let mut out = vec![0f32; rows * width];
                let t = Instant::now();
                p.outputs(&o, rows, &mut out).unwrap();
                (o, out, p.version(), t.elapsed().as_secs_f64())
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// The largest absolute difference between two rows of outputs.
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn a_full_batch_is_one_pass_and_matches_the_actor_side_forward_pass() {
    for (net, obs, actions, tag) in [
        (Network::Nips, ObsSpec::Frames([4, 84, 84]), 6, "nips"),
        (Network::Mlp, ObsSpec::Vector(4), 2, "mlp"),
    ] {
        let (served, local) = twins(net, obs, actions);
        let width = served.act_width();
        // Three actors of two environments: a batch is full at 6 rows; the timeout is long, so
        // one pass means the server batched them.
        let batching = Batching {
            full: 6,
            wait: Duration::from_secs(30),
        };
        let (mut srv, name) = server(tag, served, obs, 3, 2, batching);
        let mut mine = snapshot_policy(&local, obs, tag);
        let mut one = vec![0f32; width];
        let t = Instant::now();
        let answers = ask_once(&name, obs, width, 3, 2);
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{tag}: {:?}",
            t.elapsed()
        );
        let stats = srv.stats();
        assert_eq!(
            (stats.passes, stats.rows, stats.requests, stats.full_passes),
            (1, 6, 3, 1),
            "{tag}"
        );
        for (o, out, version, _) in &answers {
            assert_eq!(*version, 0, "{tag}: no refresh yet");
            // The actor-side forward pass of `--inference actor`, one observation at a time.
            for r in 0..2 {
                let row = mine
                    .outputs(&o[r * obs.bytes()..(r + 1) * obs.bytes()], 1, &mut one)
                    .map(|()| one.clone())
                    .unwrap();
                let got = &out[r * width..(r + 1) * width];
                assert!(max_diff(&row, got) < 1e-5, "{tag}: {row:?} vs {got:?}");
            }
        }
        srv.stop().unwrap();
    }
}

#[test]
fn a_lone_request_is_answered_after_the_wait() {
    let obs = ObsSpec::Vector(4);
    let (served, _) = twins(Network::Mlp, obs, 2);
    let wait = Duration::from_millis(60);
    let (srv, name) = server("lone", served, obs, 4, 1, Batching { full: 4, wait });
    let answers = ask_once(&name, obs, 2, 1, 1);
    let waited = answers[0].3;
    assert!(
        waited >= wait.as_secs_f64() * 0.9,
        "answered after {waited} s"
    );
    assert!(waited < 5.0, "answered after {waited} s");
    let stats = srv.stats();
    assert_eq!((stats.passes, stats.rows, stats.full_passes), (1, 1, 0));
}

#[test]
fn an_actor_that_needs_no_outputs_does_not_hold_the_batch_back() {
    let obs = ObsSpec::Vector(4);
    let (served, _) = twins(Network::Mlp, obs, 2);
    // Two actors, a full batch of 2, a timeout far beyond the test: actor 1 explores this step
    // and says so, so actor 0's lone request is computed at once.
    let batching = Batching {
        full: 2,
        wait: Duration::from_secs(60),
    };
    let (srv, name) = server("skip", served, obs, 2, 1, batching);
    let asker = {
        let name = name.clone();
        std::thread::spawn(move || {
            let mut p = ServedPolicy::open(&name, 0).unwrap();
            let t = Instant::now();
            p.outputs(&[0u8; 16], 1, &mut [0f32; 2]).unwrap();
            t.elapsed()
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let mut explorer = ServedPolicy::open(&name, 1).unwrap();
    explorer.skip();
    let waited = asker.join().unwrap();
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    let stats = srv.stats();
    assert_eq!((stats.passes, stats.rows, stats.full_passes), (1, 1, 1));
}

#[test]
fn dead_actors_do_not_wedge_the_server() {
    let obs = ObsSpec::Vector(4);
    let (served, _) = twins(Network::Mlp, obs, 2);
    let wait = Duration::from_millis(5);
    // Slot 0 never asks (its actor died before its first request), slot 1 asks once and dies
    // without waiting for the answer, slot 2 keeps asking.
    let (srv, name) = server("dead", served, obs, 3, 1, Batching { full: 3, wait });
    let slots = InferenceSlots::open(&name).unwrap();
    slots.post(1, &[0u8; 16], 1, 2).unwrap();
    drop(slots);
    let mut live = ServedPolicy::open(&name, 2).unwrap();
    let mut out = [0f32; 2];
    let t = Instant::now();
    for i in 0..20 {
        let o = random_obs(obs, 1, &mut StdRng::seed_from_u64(i));
        live.outputs(&o, 1, &mut out).unwrap();
        assert!(out.iter().all(|x| x.is_finite()));
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let stats = srv.stats();
    assert_eq!(
        stats.requests, 21,
        "the dead actor's request was answered too"
    );
    assert_eq!(stats.full_passes, 0);
}

#[test]
fn a_refresh_serves_the_new_weights_with_a_new_version() {
    let obs = ObsSpec::Vector(4);
    let (served, _) = twins(Network::Mlp, obs, 2);
    let batching = Batching {
        full: 1,
        wait: Duration::from_millis(1),
    };
    let (mut srv, name) = server("refresh", served, obs, 1, 1, batching);
    tch::manual_seed(11);
    let newer = AgentNetwork::new(Network::Mlp, obs, 2, Device::Cpu);
    assert_eq!(srv.refresh(&newer), Some(1));
    let answers = ask_once(&name, obs, 2, 1, 1);
    let (o, out, version, _) = &answers[0];
    assert_eq!(*version, 1);
    let mut one = vec![0f32; 2];
    snapshot_policy(&newer, obs, "newer")
        .outputs(o, 1, &mut one)
        .unwrap();
    let want = one;
    assert!(max_diff(&want, out) < 1e-6, "{want:?} vs {out:?}");
    assert_eq!(srv.refresh(&newer), Some(2));
    srv.stop().unwrap();
    // Stopped: requests are refused instead of waiting forever.
    let mut p = ServedPolicy::open(&name, 0);
    if let Ok(p) = p.as_mut() {
        assert!(p.is_closed());
        let err = p.outputs(o, 1, &mut [0f32; 2]).unwrap_err();
        assert!(err.to_string().contains("stopped"), "{err}");
    }
}

/// `--inference actor`'s policy source with the weights of `model`, through a weight snapshot.
fn snapshot_policy(model: &AgentNetwork, obs: ObsSpec, tag: &str) -> SnapshotPolicy {
    let mut flat = vec![0f32; model.numel()];
    model.flat_params_into(&mut flat);
    let mut snap =
        WeightSnapshot::create(&segment_name(&format!("test-snap-{tag}")), flat.len()).unwrap();
    let version = snap.publish(&flat).unwrap();
    let mut copy = AgentNetwork::new(model.spec(), obs, model.num_actions(), Device::Cpu);
    copy.load_flat(&flat);
    // The policy keeps a reader; the creator's handle unlinks the name when dropped, which the
    // reader's mapping outlives.
    let reader = WeightSnapshot::open(&segment_name(&format!("test-snap-{tag}"))).unwrap();
    drop(snap);
    SnapshotPolicy::new(copy, reader, flat, version, obs, 2)
}
