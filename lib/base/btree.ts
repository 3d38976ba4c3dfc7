/**
 * An ordered map from numbers (gfns, file pages: below 2^53, exact in a double) to values: a
 * B+ tree with leaves of up to 64 keys, linked for iteration. get, floor, set and delete are
 * O(log n) in any order of keys (32,764 memslots deleted lowest first cost what the same
 * deletes cost highest first), and memory is about 20 bytes per key.
 *
 * Deletion removes empty nodes but does not merge sparse ones: the height stays within the
 * logarithm of the largest size the tree had.
 */
const MAX = 64;

interface Leaf<V> {
  leaf: true;
  keys: number[];
  values: V[];
  next: Leaf<V> | undefined;
}

interface Inner<V> {
  leaf: false;
  /** keys[i] is the smallest key under children[i] (keys[0] is not used for routing). */
  keys: number[];
  children: Node<V>[];
}

type Node<V> = Leaf<V> | Inner<V>;

/** Index of the last element of `a` that is <= key, or -1 (a binary search). */
function floorIndex(a: readonly number[], key: number): number {
  let lo = 0;
  let hi = a.length - 1;
  let ans = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid]! <= key) {
      ans = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return ans;
}

export class BTree<V> {
  #root: Node<V> = { leaf: true, keys: [], values: [], next: undefined };
  #size = 0;

  get size(): number {
    return this.#size;
  }

  /** The leaf where `key` is or would go, and the path of inner nodes and child indexes to it. */
  #descend(key: number, path?: [Inner<V>, number][]): Leaf<V> {
    let n = this.#root;
    while (!n.leaf) {
      const i = Math.max(0, floorIndex(n.keys, key));
      path?.push([n, i]);
      n = n.children[i]!;
    }
    return n;
  }

  get(key: number): V | undefined {
    const leaf = this.#descend(key);
    const i = floorIndex(leaf.keys, key);
    return i >= 0 && leaf.keys[i] === key ? leaf.values[i] : undefined;
  }

  has(key: number): boolean {
    const leaf = this.#descend(key);
    const i = floorIndex(leaf.keys, key);
    return i >= 0 && leaf.keys[i] === key;
  }

  /** The entry with the largest key <= `key`, or undefined. */
  floor(key: number): [number, V] | undefined {
    const path: [Inner<V>, number][] = [];
    const leaf = this.#descend(key, path);
    const i = floorIndex(leaf.keys, key);
    if (i >= 0) return [leaf.keys[i]!, leaf.values[i]!];
    // Every key of this leaf is above `key`: the floor is the last key of the leaf before it.
    for (let d = path.length - 1; d >= 0; d--) {
      const [node, ci] = path[d]!;
      if (ci > 0) {
        let n = node.children[ci - 1]!;
        while (!n.leaf) n = n.children[n.children.length - 1]!;
        return n.keys.length ? [n.keys[n.keys.length - 1]!, n.values[n.values.length - 1]!] : undefined;
      }
    }
    return undefined;
  }

  /** Entries with keys >= `from` (all when omitted), ascending. */
  *entries(from = -Infinity): IterableIterator<[number, V]> {
    let leaf: Leaf<V> | undefined = this.#descend(from);
    let i = floorIndex(leaf.keys, from);
    if (i < 0 || leaf.keys[i]! < from) i++;
    while (leaf) {
      for (; i < leaf.keys.length; i++) yield [leaf.keys[i]!, leaf.values[i]!];
      leaf = leaf.next;
      i = 0;
    }
  }

  /** The entry with the smallest key >= `key`, or undefined. */
  ceil(key: number): [number, V] | undefined {
    const r = this.entries(key).next();
    return r.done ? undefined : r.value;
  }

  /** Inserts or replaces. */
  set(key: number, value: V): void {
    const path: [Inner<V>, number][] = [];
    const leaf = this.#descend(key, path);
    const i = floorIndex(leaf.keys, key);
    if (i >= 0 && leaf.keys[i] === key) {
      leaf.values[i] = value;
      return;
    }
    leaf.keys.splice(i + 1, 0, key);
    leaf.values.splice(i + 1, 0, value);
    this.#size++;
    if (i + 1 === 0) this.#fixMin(path, key);
    if (leaf.keys.length > MAX) this.#split(leaf, path);
  }

  /** A node's smallest key changed to `key`: the routing keys above it follow. */
  #fixMin(path: [Inner<V>, number][], key: number): void {
    for (let d = path.length - 1; d >= 0; d--) {
      const [node, ci] = path[d]!;
      node.keys[ci] = key;
      if (ci !== 0) break;
    }
  }

  #split(node: Node<V>, path: [Inner<V>, number][]): void {
    const half = node.keys.length >>> 1;
    let right: Node<V>;
    if (node.leaf) {
      right = { leaf: true, keys: node.keys.splice(half), values: node.values.splice(half), next: node.next };
      node.next = right;
    } else {
      right = { leaf: false, keys: node.keys.splice(half), children: node.children.splice(half) };
    }
    const parentEntry = path.pop();
    if (!parentEntry) {
      this.#root = { leaf: false, keys: [node.keys[0]!, right.keys[0]!], children: [node, right] };
      return;
    }
    const [parent, ci] = parentEntry;
    parent.keys.splice(ci + 1, 0, right.keys[0]!);
    parent.children.splice(ci + 1, 0, right);
    if (parent.keys.length > MAX) this.#split(parent, path);
  }

  delete(key: number): boolean {
    const path: [Inner<V>, number][] = [];
    const leaf = this.#descend(key, path);
    const i = floorIndex(leaf.keys, key);
    if (i < 0 || leaf.keys[i] !== key) return false;
    leaf.keys.splice(i, 1);
    leaf.values.splice(i, 1);
    this.#size--;
    if (leaf.keys.length === 0) this.#removeEmpty(leaf, path);
    else if (i === 0) this.#fixMin(path, leaf.keys[0]!);
    return true;
  }

  /** Unlinks an empty node from its parent (and empty parents from theirs). */
  #removeEmpty(node: Node<V>, path: [Inner<V>, number][]): void {
    const parentEntry = path.pop();
    if (!parentEntry) return; // the root stays, empty
    const [parent, ci] = parentEntry;
    if (node.leaf) {
      // The leaf before it (in key order) now links past it.
      const prev = this.#leafBefore(path, parent, ci);
      if (prev) prev.next = node.next;
    }
    parent.keys.splice(ci, 1);
    parent.children.splice(ci, 1);
    if (parent.children.length === 0) this.#removeEmpty(parent, path);
    else {
      // The parent's smallest key changed: the routing keys above it follow.
      if (ci === 0) this.#fixMin(path, parent.keys[0]!);
      // A root with one child gives way to it.
      while (!this.#root.leaf && this.#root.children.length === 1) this.#root = this.#root.children[0]!;
    }
  }

  /** The leaf just before child `ci` of `parent` (whose own path above is `path`). */
  #leafBefore(path: [Inner<V>, number][], parent: Inner<V>, ci: number): Leaf<V> | undefined {
    let n: Node<V> | undefined;
    if (ci > 0) n = parent.children[ci - 1];
    else {
      for (let d = path.length - 1; d >= 0 && !n; d--) {
        const [node, i] = path[d]!;
        if (i > 0) n = node.children[i - 1];
      }
    }
    if (!n) return undefined;
    while (!n.leaf) n = n.children[n.children.length - 1]!;
    return n;
  }

  clear(): void {
    this.#root = { leaf: true, keys: [], values: [], next: undefined };
    this.#size = 0;
  }
}
