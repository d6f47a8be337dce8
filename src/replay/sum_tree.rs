//! A sum-tree over non-negative priorities: set and draw in O(log n) (Schaul et al. 2015).
//! Every inner node is recomputed as left + right, never updated by a delta, so the tree
//! is a pure function of its leaves: rebuilt after a resume it is bit-identical.

#[derive(Debug, Clone)]
pub struct SumTree {
    leaves: usize,
    size: usize,
    tree: Vec<f64>,
}

impl SumTree {
    pub fn new(leaves: usize) -> Self {
        let size = leaves.max(1).next_power_of_two();
        Self {
            leaves,
            size,
            tree: vec![0.0; 2 * size],
        }
    }

    pub fn len(&self) -> usize {
        self.leaves
    }

    pub fn is_empty(&self) -> bool {
        self.leaves == 0
    }

    pub fn total(&self) -> f64 {
        self.tree[1]
    }

    pub fn get(&self, i: usize) -> f64 {
        self.tree[self.size + i]
    }

    /// Sets leaf i; priorities must be finite and non-negative.
    pub fn set(&mut self, i: usize, p: f64) {
        assert!(
            i < self.leaves,
            "sum-tree leaf {i} out of range {}",
            self.leaves
        );
        assert!(
            p.is_finite() && p >= 0.0,
            "priority must be finite and >= 0, got {p}"
        );
        let mut node = self.size + i;
        self.tree[node] = p;
        while node > 1 {
            node /= 2;
            self.tree[node] = self.tree[2 * node] + self.tree[2 * node + 1];
        }
    }

    /// The leaf whose cumulative range holds `u` in [0, total): drawn with probability
    /// p_i / total when u is uniform. Never returns a leaf of priority 0.
    pub fn find(&self, mut u: f64) -> usize {
        let mut node = 1;
        while node < self.size {
            let (left, right) = (2 * node, 2 * node + 1);
            if u < self.tree[left] || self.tree[right] <= 0.0 {
                // Rounding can push u past the left sum by an ulp; clamp into it.
                u = u.min(self.tree[left]);
                node = left;
            } else {
                u -= self.tree[left];
                node = right;
            }
        }
        node - self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_is_sum_and_find_respects_ranges() {
        let mut t = SumTree::new(5);
        for (i, p) in [1.0, 0.0, 2.0, 3.0, 0.0].iter().enumerate() {
            t.set(i, *p);
        }
        assert_eq!(t.total(), 6.0);
        assert_eq!(t.find(0.5), 0);
        assert_eq!(t.find(1.0), 2);
        assert_eq!(t.find(2.9), 2);
        assert_eq!(t.find(3.0), 3);
        assert_eq!(t.find(5.999), 3);
        assert_eq!(t.find(6.0), 3, "u = total must not land on a zero leaf");
        t.set(3, 0.0);
        assert_eq!(t.total(), 3.0);
        assert_eq!(t.find(2.99), 2);
    }
}
