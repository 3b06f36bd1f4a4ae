//! Seeded synthetic embeddings for retrieval benchmarks and tests: unit
//! vectors scattered around `clusters` random unit centres, as trained item
//! embeddings tend to be (topics, styles), rather than uniform on the sphere
//! where every method looks the same.
//!
//! Everything is a pure function of the seed: the same `Clustered` gives the
//! same items and queries on every machine and any thread count (rows are
//! generated in fixed blocks, each with its own stream derived from the
//! seed, the block and the purpose).

/// splitmix64: seeds the generator streams.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// xoshiro256++ (public-domain algorithm), small and fast; not for secrets.
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut s = [0u64; 4];
        let mut x = seed;
        for v in &mut s {
            x = splitmix(x);
            *v = x;
        }
        Rng(s)
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let out = (s[0].wrapping_add(s[3])).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Two independent standard normals (Box–Muller).
    pub fn normal_pair(&mut self) -> (f32, f32) {
        let u = 1.0 - self.uniform(); // (0, 1]: ln is finite
        let v = self.uniform();
        let r = (-2.0 * u.ln()).sqrt();
        let t = std::f64::consts::TAU * v;
        ((r * t.cos()) as f32, (r * t.sin()) as f32)
    }

    /// Fills `out` with standard normals.
    pub fn fill_normal(&mut self, out: &mut [f32]) {
        let mut chunks = out.chunks_exact_mut(2);
        for pair in &mut chunks {
            let (a, b) = self.normal_pair();
            pair[0] = a;
            pair[1] = b;
        }
        if let [last] = chunks.into_remainder() {
            *last = self.normal_pair().0;
        }
    }
}

/// Scales `v` to unit length; leaves a zero vector as it is.
pub fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// A mixture of `clusters` gaussian blobs on the unit sphere.
#[derive(Debug, Clone)]
pub struct Clustered {
    pub dim: usize,
    pub seed: u64,
    /// Unit centres, `[clusters, dim]`.
    centres: Vec<f32>,
    /// Standard deviation of the offset from the centre, relative to the
    /// centre's unit length (the whole offset has norm ≈ `spread`).
    pub spread: f32,
}

/// Rows per independently seeded block.
const BLOCK: usize = 4096;
const ITEMS: u64 = 1;
const QUERIES: u64 = 2;

impl Clustered {
    pub fn new(dim: usize, clusters: usize, spread: f32, seed: u64) -> Clustered {
        assert!(dim > 0 && clusters > 0, "dim and clusters must be positive");
        let mut rng = Rng::new(seed);
        let mut centres = vec![0f32; clusters * dim];
        for c in centres.chunks_exact_mut(dim) {
            rng.fill_normal(c);
            normalise(c);
        }
        Clustered {
            dim,
            seed,
            centres,
            spread,
        }
    }

    pub fn clusters(&self) -> usize {
        self.centres.len() / self.dim
    }

    /// `n` catalog items, `[n, dim]`, unit norm.
    pub fn items(&self, n: usize) -> Vec<f32> {
        self.sample(n, ITEMS)
    }

    /// `n` held-out queries from the same distribution (another stream).
    pub fn queries(&self, n: usize) -> Vec<f32> {
        self.sample(n, QUERIES)
    }

    fn sample(&self, n: usize, purpose: u64) -> Vec<f32> {
        let dim = self.dim;
        let mut out = vec![0f32; n * dim];
        let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
        let blocks: Vec<(usize, &mut [f32])> = out.chunks_mut(BLOCK * dim).enumerate().collect();
        let per_thread = blocks.len().div_ceil(threads.max(1)).max(1);
        let mut blocks = blocks;
        std::thread::scope(|scope| {
            while !blocks.is_empty() {
                let take = per_thread.min(blocks.len());
                let mine: Vec<(usize, &mut [f32])> = blocks.drain(..take).collect();
                scope.spawn(move || {
                    for (b, rows) in mine {
                        self.fill_block(b as u64, purpose, rows);
                    }
                });
            }
        });
        out
    }

    fn fill_block(&self, block: u64, purpose: u64, rows: &mut [f32]) {
        let stream = splitmix(self.seed ^ splitmix(purpose << 48 ^ block));
        let mut rng = Rng::new(stream);
        let scale = self.spread / (self.dim as f32).sqrt();
        let clusters = self.clusters();
        for row in rows.chunks_exact_mut(self.dim) {
            let c = rng.below(clusters);
            rng.fill_normal(row);
            let centre = &self.centres[c * self.dim..(c + 1) * self.dim];
            for (x, m) in row.iter_mut().zip(centre) {
                *x = m + scale * *x;
            }
            normalise(row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_unit_and_clustered() {
        let gen = Clustered::new(16, 8, 0.5, 42);
        let a = gen.items(10_000);
        assert_eq!(a, Clustered::new(16, 8, 0.5, 42).items(10_000));
        assert_ne!(a, Clustered::new(16, 8, 0.5, 43).items(10_000));
        let q = gen.queries(100);
        assert_ne!(q[..16], a[..16], "queries are another stream");
        for row in a.chunks_exact(16) {
            let n: f32 = row.iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-5);
        }
        // Clustered: the best centre is much closer than a random pair.
        let best = |row: &[f32]| {
            gen.centres
                .chunks_exact(16)
                .map(|c| c.iter().zip(row).map(|(x, y)| x * y).sum::<f32>())
                .fold(f32::MIN, f32::max)
        };
        let mean_best: f32 = a.chunks_exact(16).take(200).map(best).sum::<f32>() / 200.0;
        assert!(mean_best > 0.8, "mean cosine to nearest centre {mean_best}");
    }

    #[test]
    fn normals_look_normal() {
        let mut rng = Rng::new(1);
        let mut v = vec![0f32; 100_001];
        rng.fill_normal(&mut v);
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / v.len() as f32;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.02,
            "{mean} {var}"
        );
    }
}
