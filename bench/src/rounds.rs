//! Alternating rounds: the order in which the stores compared side by side run in each round.

/// `sides` in the order round `round` (from 1) runs them: odd rounds as given, even rounds
/// reversed, so that no store always runs first (in a fresh client process, or right after the
/// other store's load) or always last.
pub fn round_order<T: Copy>(sides: &[T], round: usize) -> Vec<T> {
    let mut order = sides.to_vec();
    if round.is_multiple_of(2) {
        order.reverse();
    }
    order
}

#[cfg(test)]
mod tests {
    use super::round_order;

    #[test]
    fn each_side_goes_first_in_every_other_round() {
        assert_eq!(round_order(&["shoal", "etcd"], 1), ["shoal", "etcd"]);
        assert_eq!(round_order(&["shoal", "etcd"], 2), ["etcd", "shoal"]);
        assert_eq!(round_order(&["shoal", "etcd"], 3), ["shoal", "etcd"]);
        assert_eq!(round_order(&[0, 1, 2, 3], 2), [3, 2, 1, 0]);
        assert_eq!(round_order(&["etcd"], 2), ["etcd"]);
    }
}
