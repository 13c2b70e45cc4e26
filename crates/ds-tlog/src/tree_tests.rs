//! The tree against RFC 6962's own examples (§2.1.3, §2.1.4) computed by hand, the Certificate
//! Transparency test leaves, and an independent implementation (`ct-merkle`).

use super::*;
use ct_merkle::{ConsistencyProof, InclusionProof, RootHash, mem_backed_tree::MemoryBackedTree};
use sha2_next::Sha256 as Sha256Next;

/// The leaf inputs of Certificate Transparency's reference tests.
fn inputs() -> Vec<Vec<u8>> {
    [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
    .iter()
    .map(|h| hex::decode(h).unwrap())
    .collect()
}

fn leaves() -> Vec<Hash> {
    inputs().iter().map(|d| record_hash(d)).collect()
}

/// Every stored hash of a tree of `n` leaves, appended one by one.
fn stored(leaves: &[Hash]) -> StoredHashes {
    let mut all = StoredHashes::new();
    for (n, leaf) in leaves.iter().enumerate() {
        let need = append_indexes(n as u64, 1).unwrap();
        let sub = only(&all, &need);
        for (i, h) in append(n as u64, std::slice::from_ref(leaf), &sub).unwrap() {
            assert!(all.insert(i, h).is_none(), "index {i} written twice");
        }
    }
    all
}

/// The hashes an operation said it needs, and nothing else: proves the plan is complete.
fn only(all: &StoredHashes, indexes: &[u64]) -> StoredHashes {
    indexes
        .iter()
        .map(|i| {
            (
                *i,
                *all.get(i).unwrap_or_else(|| panic!("index {i} not stored")),
            )
        })
        .collect()
}

fn h(hex_root: &str) -> Hash {
    Hash(hex::decode(hex_root).unwrap().try_into().unwrap())
}

#[test]
fn roots_are_rfc_6962_mth_written_out_by_hand() {
    let l = leaves();
    let n = node_hash;
    let n01 = n(l[0], l[1]);
    let n23 = n(l[2], l[3]);
    let n45 = n(l[4], l[5]);
    let n0123 = n(n01, n23);
    let by_hand = [
        EMPTY_HASH,
        l[0],
        n01,
        n(n01, l[2]),
        n0123,
        n(n0123, l[4]),
        n(n0123, n45),
        n(n0123, n(n45, l[6])),
        n(n0123, n(n45, n(l[6], l[7]))),
    ];
    // The published roots of the CT reference tests for sizes 1..8.
    let published = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    assert_eq!(
        EMPTY_HASH,
        h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    );
    let all = stored(&l);
    let mut range = CompactRange::default();
    assert_eq!(range.root(), EMPTY_HASH);
    for size in 1..=8u64 {
        let expected = by_hand[size as usize];
        assert_eq!(expected, h(published[size as usize - 1]), "size {size}");
        let need = root_indexes(size).unwrap();
        assert_eq!(
            root(size, &only(&all, &need)).unwrap(),
            expected,
            "size {size}"
        );
        range.push(l[size as usize - 1]);
        assert_eq!(range.root(), expected, "compact range, size {size}");
    }
}

/// The tree of RFC 6962 §2.1.3: leaves a..f, j = d6; g = H(a,b), h = H(c,d), i = H(e,f),
/// k = H(g,h), l = H(i,j).
struct Rfc {
    a: Hash,
    b: Hash,
    c: Hash,
    d: Hash,
    f: Hash,
    g: Hash,
    h: Hash,
    i: Hash,
    j: Hash,
    k: Hash,
    l: Hash,
}

fn rfc() -> (Rfc, Vec<Hash>) {
    let v = leaves();
    let g = node_hash(v[0], v[1]);
    let h = node_hash(v[2], v[3]);
    let i = node_hash(v[4], v[5]);
    let k = node_hash(g, h);
    let l = node_hash(i, v[6]);
    (
        Rfc {
            a: v[0],
            b: v[1],
            c: v[2],
            d: v[3],
            f: v[5],
            g,
            h,
            i,
            j: v[6],
            k,
            l,
        },
        v[..7].to_vec(),
    )
}

#[test]
fn inclusion_proofs_are_the_audit_paths_of_rfc_6962_section_2_1_3() {
    let (t, seven) = rfc();
    let all = stored(&seven);
    let root7 = node_hash(t.k, t.l);
    for (index, path) in [
        (0u64, vec![t.b, t.h, t.l]),
        (3, vec![t.c, t.g, t.l]),
        (4, vec![t.f, t.j, t.k]),
        (6, vec![t.i, t.k]),
    ] {
        let need = inclusion_indexes(7, index).unwrap();
        let proof = inclusion(7, index, &only(&all, &need)).unwrap();
        assert_eq!(proof, path, "leaf {index}");
        let leaf = seven[index as usize];
        assert!(check_inclusion(&proof, 7, root7, index, leaf));
        assert!(!check_inclusion(
            &proof,
            7,
            root7,
            index,
            t.a.max_other(leaf)
        ));
        assert!(!check_inclusion(&proof, 7, root7, (index + 1) % 7, leaf));
    }
    assert!(inclusion_indexes(7, 7).is_err());
}

#[test]
fn consistency_proofs_are_those_of_rfc_6962_section_2_1_4() {
    let (t, seven) = rfc();
    let all = stored(&seven);
    let root7 = node_hash(t.k, t.l);
    let root3 = node_hash(t.g, t.c);
    let root4 = t.k;
    let root6 = node_hash(t.k, t.i);
    for (from, from_root, expected) in [
        (3u64, root3, vec![t.c, t.d, t.g, t.l]),
        (4, root4, vec![t.l]),
        (6, root6, vec![t.i, t.j, t.k]),
    ] {
        let need = consistency_indexes(from, 7).unwrap();
        let proof = consistency(from, 7, &only(&all, &need)).unwrap();
        assert_eq!(proof, expected, "from {from}");
        assert!(check_consistency(&proof, from, from_root, 7, root7));
        assert!(!check_consistency(&proof, from, root7, 7, root7));
        assert!(!check_consistency(&proof, from, from_root, 7, from_root));
    }
    assert!(consistency_indexes(0, 7).is_err());
    assert!(consistency_indexes(8, 7).is_err());
    assert!(check_consistency(&[], 7, root7, 7, root7));
}

trait Other {
    fn max_other(self, than: Hash) -> Hash;
}

impl Other for Hash {
    /// A hash other than `than`.
    fn max_other(self, than: Hash) -> Hash {
        if self == than { Hash([0xff; 32]) } else { self }
    }
}

fn bytes(n: usize) -> Vec<u8> {
    format!("leaf {n}").into_bytes()
}

#[test]
fn roots_and_proofs_agree_with_ct_merkle_for_every_size_up_to_70() {
    let mut theirs: MemoryBackedTree<Sha256Next, Vec<u8>> = MemoryBackedTree::new();
    let mut ours: Vec<Hash> = Vec::new();
    let mut all = StoredHashes::new();
    let mut roots = vec![EMPTY_HASH];
    for n in 0..70usize {
        theirs.push(bytes(n));
        ours.push(record_hash(&bytes(n)));
        let size = n as u64 + 1;
        let need = append_indexes(size - 1, 1).unwrap();
        for (i, h) in append(size - 1, &ours[n..], &only(&all, &need)).unwrap() {
            all.insert(i, h);
        }
        let root_here = root(size, &only(&all, &root_indexes(size).unwrap())).unwrap();
        assert_eq!(root_here.0.as_slice(), theirs.root().as_bytes().as_slice());
        roots.push(root_here);
        let their_root = theirs.root();
        for index in 0..size {
            let proof = inclusion(
                size,
                index,
                &only(&all, &inclusion_indexes(size, index).unwrap()),
            )
            .unwrap();
            let digests: Vec<_> = proof.iter().map(|h| h.0.into()).collect();
            their_root
                .verify_inclusion(
                    &bytes(index as usize),
                    index,
                    &InclusionProof::<Sha256Next>::from_digests(digests.iter()),
                )
                .unwrap_or_else(|e| panic!("size {size} leaf {index}: {e:?}"));
        }
        for from in 1..=size {
            let proof = consistency(
                from,
                size,
                &only(&all, &consistency_indexes(from, size).unwrap()),
            )
            .unwrap();
            let digests: Vec<_> = proof.iter().map(|h| h.0.into()).collect();
            let old = RootHash::<Sha256Next>::new(roots[from as usize].0.into(), from);
            if from < size {
                their_root
                    .verify_consistency(
                        &old,
                        &ConsistencyProof::<Sha256Next>::from_digests(digests.iter()),
                    )
                    .unwrap_or_else(|e| panic!("{from} -> {size}: {e:?}"));
            }
            assert!(check_consistency(
                &proof,
                from,
                roots[from as usize],
                size,
                root_here
            ));
        }
    }
}

#[test]
fn appending_in_batches_stores_what_appending_one_by_one_stores() {
    let leaves: Vec<Hash> = (0..300).map(|n| record_hash(&bytes(n))).collect();
    let one_by_one = stored(&leaves);
    let mut batched = StoredHashes::new();
    let mut size = 0u64;
    for batch in [1usize, 2, 5, 64, 3, 100, 125] {
        let slice = &leaves[size as usize..size as usize + batch];
        let need = append_indexes(size, batch as u64).unwrap();
        assert!(need.iter().all(|&i| i < stored_hash_index(0, size)));
        let written = append(size, slice, &only(&batched, &need)).unwrap();
        let mut previous = None;
        for (i, h) in written {
            assert!(previous.is_none_or(|p| p < i), "index order");
            previous = Some(i);
            batched.insert(i, h);
        }
        size += batch as u64;
    }
    assert_eq!(size, 300);
    assert_eq!(batched, one_by_one);
    // About two stored hashes per leaf.
    assert!(batched.len() < 2 * 300);
    // Leaf 299 completes two subtrees: without the stored hashes of their left halves it fails.
    assert_eq!(append_indexes(299, 1).unwrap().len(), 2);
    assert!(
        append(299, &leaves[..1], &StoredHashes::new()).is_err(),
        "missing siblings"
    );
}

#[test]
fn each_stored_hash_is_found_with_the_leaf_whose_append_stored_it() {
    let leaves: Vec<Hash> = (0..1100).map(|n| record_hash(&bytes(n))).collect();
    let mut known = StoredHashes::new();
    for (n, leaf) in (0u64..).zip(&leaves) {
        let written = append(n, std::slice::from_ref(leaf), &known).unwrap();
        let (first, end) = (stored_hash_index(0, n), stored_hash_index(0, n + 1));
        assert_eq!(written.first().map(|w| w.0), Some(first));
        assert_eq!(written.len() as u64, end - first);
        for (i, h) in written {
            assert_eq!(stored_by_leaf(i), n, "stored hash {i}");
            known.insert(i, h);
        }
    }
}
