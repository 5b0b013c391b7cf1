//! Tests of the network: shapes, heads, the flat parameter order and checkpoint loading.

use super::*;

#[test]
fn shapes_and_parameter_counts() {
    let frames = ObsSpec::Frames([4, 84, 84]);
    let nips = AgentNetwork::new(Network::Nips, frames, 4, Device::Cpu);
    // conv1 4*16*64+16, conv2 16*32*16+32, fc 2592*256+256, q 256*4+4
    assert_eq!(nips.numel(), 4112 + 8224 + 663_808 + 1028);
    let x = Tensor::zeros([3, 4, 84, 84], (Kind::Uint8, Device::Cpu));
    assert_eq!(nips.forward(&x).size(), vec![3, 4]);
    let nature = AgentNetwork::new(Network::Nature, frames, 6, Device::Cpu);
    assert_eq!(nature.forward(&x).size(), vec![3, 6]);
    let mlp = AgentNetwork::new(Network::Mlp, ObsSpec::Vector(4), 2, Device::Cpu);
    assert_eq!(mlp.numel(), 4 * 64 + 64 + 64 * 64 + 64 + 64 * 2 + 2);
    let bytes: Vec<u8> = [0.1f32, -0.2, 0.3, 0.0, 1.0, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
    let v = obs_tensor(ObsSpec::Vector(4), &bytes, 2);
    assert_eq!(v.size(), vec![2, 4]);
    assert_eq!(v.double_value(&[1, 2]), 3.0);
    assert_eq!(mlp.forward(&v).size(), vec![2, 2]);
    // The input layer is a parameter and reads the observation's channels (features).
    for net in [&nips, &nature, &mlp] {
        let (_, w) = net
            .params()
            .iter()
            .find(|(n, _)| *n == net.input_layer())
            .unwrap_or_else(|| panic!("{:?}: no {}", net.arch(), net.input_layer()));
        assert_eq!(w.size()[1], 4, "{:?}", net.arch());
    }
}

#[test]
fn dueling_heads_combine_value_and_advantage_for_every_network() {
    let dueling = |arch| NetSpec {
        arch,
        head: HeadKind::Dueling,
    };
    let frames = ObsSpec::Frames([4, 84, 84]);
    let x = Tensor::randint(256, [3, 4, 84, 84], (Kind::Uint8, Device::Cpu));
    for arch in [Network::Nips, Network::Nature] {
        let net = AgentNetwork::new(dueling(arch), frames, 5, Device::Cpu);
        assert_eq!(net.forward(&x).size(), vec![3, 5], "{arch:?}");
    }
    // The MLP by hand: Q = V + A - mean_a A, from the named parameters.
    tch::manual_seed(4);
    let net = AgentNetwork::new(dueling(Network::Mlp), ObsSpec::Vector(4), 3, Device::Cpu);
    let names: Vec<&str> = net.params().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "advantage.bias",
            "advantage.weight",
            "advantage_fc.bias",
            "advantage_fc.weight",
            "fc1.bias",
            "fc1.weight",
            "value.bias",
            "value.weight",
            "value_fc.bias",
            "value_fc.weight"
        ]
    );
    let p = |n: &str| &net.params().iter().find(|(m, _)| m == n).unwrap().1;
    let lin =
        |x: &Tensor, l: &str| x.matmul(&p(&format!("{l}.weight")).tr()) + p(&format!("{l}.bias"));
    let v = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.1, 0.0, 1.0, -0.3, 0.7]).view([2, 4]);
    let f = lin(&v, "fc1").relu();
    let value = lin(&lin(&f, "value_fc").relu(), "value");
    let adv = lin(&lin(&f, "advantage_fc").relu(), "advantage");
    let expect = &value + &adv - adv.mean_dim(1, true, Kind::Float);
    assert!(net.forward(&v).allclose(&expect, 1e-5, 1e-6, false));
    assert_eq!(net.spec(), dueling(Network::Mlp));
}

#[test]
fn actor_critic_heads_give_logits_and_values_from_one_hidden_layer() {
    let ac = |arch| NetSpec {
        arch,
        head: HeadKind::ActorCritic,
    };
    let frames = ObsSpec::Frames([4, 84, 84]);
    let x = Tensor::randint(256, [3, 4, 84, 84], (Kind::Uint8, Device::Cpu));
    for arch in [Network::Nips, Network::Nature] {
        let net = AgentNetwork::new(ac(arch), frames, 6, Device::Cpu);
        let (logits, values) = net.policy_value(&x).unwrap();
        assert_eq!(
            (logits.size(), values.size()),
            (vec![3, 6], vec![3]),
            "{arch:?}"
        );
        assert_eq!(net.act_width(), 7);
        // forward is the logits (the argmax is the greedy action); act_outputs appends V.
        assert!(net.forward(&x).allclose(&logits, 1e-6, 1e-6, false));
        let out = net.act_outputs(&x);
        assert!(out
            .narrow(1, 6, 1)
            .squeeze_dim(1)
            .allclose(&values, 1e-6, 1e-6, false));
    }
    // The A3C FF network: the nips torso and fc 256, then 6 logits and one value.
    let nips = AgentNetwork::new(ac(Network::Nips), frames, 6, Device::Cpu);
    assert_eq!(nips.numel(), 4112 + 8224 + 663_808 + 256 * 6 + 6 + 256 + 1);
    // The MLP by hand from its named parameters.
    let net = AgentNetwork::new(ac(Network::Mlp), ObsSpec::Vector(4), 2, Device::Cpu);
    let p = |n: &str| &net.params().iter().find(|(m, _)| m == n).unwrap().1;
    let lin =
        |x: &Tensor, l: &str| x.matmul(&p(&format!("{l}.weight")).tr()) + p(&format!("{l}.bias"));
    let v = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.1]).view([1, 4]);
    let h = lin(&lin(&v, "fc1").relu(), "fc2").relu();
    let (logits, value) = net.policy_value(&v).unwrap();
    assert!(logits.allclose(&lin(&h, "policy"), 1e-5, 1e-6, false));
    assert!(value.allclose(&lin(&h, "value").squeeze_dim(1), 1e-5, 1e-6, false));
    // A Q head has no policy.
    let q = AgentNetwork::new(Network::Mlp, ObsSpec::Vector(4), 2, Device::Cpu);
    assert!(q.policy_value(&v).is_none());
    assert_eq!(q.act_width(), 2);
}

#[test]
fn auto_network_follows_the_observations() {
    let frames = ObsSpec::Frames([4, 84, 84]);
    assert_eq!(resolve_network(Network::Auto, frames), Ok(Network::Nips));
    assert_eq!(
        resolve_network(Network::Auto, ObsSpec::Vector(4)),
        Ok(Network::Mlp)
    );
    assert_eq!(
        resolve_network(Network::Nature, frames),
        Ok(Network::Nature)
    );
    assert_eq!(
        resolve_network(Network::Mlp, frames),
        Err(NetworkMismatch {
            network: Network::Mlp,
            obs: frames
        })
    );
    assert!(resolve_network(Network::Mlp, frames)
        .unwrap_err()
        .to_string()
        .contains("--network mlp"));
    assert!(resolve_network(Network::Nips, ObsSpec::Vector(4))
        .unwrap_err()
        .to_string()
        .contains("use mlp"));
}

#[test]
fn channels_last_changes_the_layout_not_the_values_nor_the_gradients() {
    tch::manual_seed(2);
    let net = AgentNetwork::new(Network::Nips, ObsSpec::Frames([4, 84, 84]), 4, Device::Cpu);
    let x = Tensor::randint(256, [5, 4, 84, 84], (Kind::Uint8, Device::Cpu));
    let y = channels_last(&x);
    assert_eq!(y.size(), x.size());
    assert_eq!(y.stride(), vec![4 * 84 * 84, 1, 84 * 4, 4]);
    assert!(y.equal(&x));
    let grads = |input: &Tensor| {
        for (_, p) in net.params() {
            let mut p = p.shallow_clone();
            p.zero_grad();
        }
        let q = net.forward(input);
        q.sum(Kind::Float).backward();
        let g: Vec<Tensor> = net.params().iter().map(|(_, p)| p.grad().copy()).collect();
        (q.detach(), g)
    };
    let (q1, g1) = grads(&x);
    let (q2, g2) = grads(&y);
    assert!(q1.allclose(&q2, 1e-4, 1e-5, false));
    for (a, b) in g1.iter().zip(&g2) {
        assert!(a.allclose(b, 1e-3, 1e-4, false));
    }
    let v = Tensor::zeros([3, 4], (Kind::Float, Device::Cpu));
    assert_eq!(channels_last(&v).stride(), v.stride());
}

#[test]
fn flat_round_trip_reproduces_outputs() {
    tch::manual_seed(1);
    let a = AgentNetwork::new(Network::Nips, ObsSpec::Frames([4, 84, 84]), 4, Device::Cpu);
    let mut b = AgentNetwork::new(Network::Nips, ObsSpec::Frames([4, 84, 84]), 4, Device::Cpu);
    let x = Tensor::randint(256, [2, 4, 84, 84], (Kind::Uint8, Device::Cpu));
    assert!(!a.forward(&x).allclose(&b.forward(&x), 1e-6, 1e-6, false));
    let mut flat = vec![0f32; a.numel()];
    a.flat_params_into(&mut flat);
    b.load_flat(&flat);
    assert!(a.forward(&x).allclose(&b.forward(&x), 1e-6, 1e-6, false));
}
