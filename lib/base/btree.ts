/**
 * An ordered map from numbers (gfns, file pages: below 2^53, exact in a double) to values: a
 * B+ tree with leaves of up to 64 keys, linked for iteration. get, floor, set and delete are
 * O(log n) in any order of keys (32,764 memslots deleted lowest first cost what the same
 * deletes cost highest first), and memory is about 20 bytes per key.
 *
 * Deletion removes empty nodes but does not merge sparse ones: the height stays within the
 * logarithm of the largest size the tree had.
 *
 * The hot calls allocate nothing: the path of a descent is kept in the tree (reused by the
 * next call), and seekFloor/seekCeil/advance move a cursor instead of returning entries (the
 * memslot books make several of these calls per KVM_SET_USER_MEMORY_REGION2).
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
  /** The inner nodes of the last recorded descent, root first, and the child taken in each. */
  #pathNodes: Inner<V>[] = [];
  #pathIdx: number[] = [];
  /** How many inner nodes the last descent passed. */
  #depth = 0;
  /** The cursor: the leaf and index the last seek or advance stopped at. */
  #leaf: Leaf<V> | undefined;
  #at = 0;
  /** The entry under the cursor (valid after a seek or advance that returned true). */
  cursorKey = 0;
  cursorValue: V | undefined;

  get size(): number {
    return this.#size;
  }

  /** The leaf where `key` is or would go; with `record`, the path to it is kept (#pathNodes, #pathIdx). */
  #descend(key: number, record: boolean): Leaf<V> {
    let n = this.#root;
    let d = 0;
    while (!n.leaf) {
      const i = Math.max(0, floorIndex(n.keys, key));
      if (record) {
        this.#pathNodes[d] = n;
        this.#pathIdx[d] = i;
      }
      d++;
      n = n.children[i]!;
    }
    this.#depth = d;
    return n;
  }

  #setCursor(leaf: Leaf<V> | undefined, i: number): boolean {
    this.#leaf = leaf;
    this.#at = i;
    if (!leaf) {
      this.cursorValue = undefined;
      return false;
    }
    this.cursorKey = leaf.keys[i]!;
    this.cursorValue = leaf.values[i];
    return true;
  }

  get(key: number): V | undefined {
    const leaf = this.#descend(key, false);
    const i = floorIndex(leaf.keys, key);
    return i >= 0 && leaf.keys[i] === key ? leaf.values[i] : undefined;
  }

  has(key: number): boolean {
    const leaf = this.#descend(key, false);
    const i = floorIndex(leaf.keys, key);
    return i >= 0 && leaf.keys[i] === key;
  }

  /** Moves the cursor to the entry with the largest key <= `key`; false when there is none. */
  seekFloor(key: number): boolean {
    const leaf = this.#descend(key, true);
    const i = floorIndex(leaf.keys, key);
    if (i >= 0) return this.#setCursor(leaf, i);
    // Every key of this leaf is above `key`: the floor is the last key of the leaf before it.
    const prev = this.#leafBefore(this.#depth);
    return prev && prev.keys.length ? this.#setCursor(prev, prev.keys.length - 1) : this.#setCursor(undefined, 0);
  }

  /** Moves the cursor to the entry with the smallest key >= `key`; false when there is none. */
  seekCeil(key: number): boolean {
    let leaf: Leaf<V> | undefined = this.#descend(key, false);
    let i = floorIndex(leaf.keys, key);
    if (i < 0 || leaf.keys[i]! < key) i++;
    while (leaf && i >= leaf.keys.length) {
      leaf = leaf.next;
      i = 0;
    }
    return this.#setCursor(leaf, i);
  }

  /** Moves the cursor to the next entry; false past the last (or with no cursor). */
  advance(): boolean {
    let leaf = this.#leaf;
    let i = this.#at + 1;
    while (leaf && i >= leaf.keys.length) {
      leaf = leaf.next;
      i = 0;
    }
    return this.#setCursor(leaf, i);
  }

  /** The entry with the largest key <= `key`, or undefined. */
  floor(key: number): [number, V] | undefined {
    return this.seekFloor(key) ? [this.cursorKey, this.cursorValue!] : undefined;
  }

  /** Entries with keys >= `from` (all when omitted), ascending. */
  *entries(from = -Infinity): IterableIterator<[number, V]> {
    let leaf: Leaf<V> | undefined = this.#descend(from, false);
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
    return this.seekCeil(key) ? [this.cursorKey, this.cursorValue!] : undefined;
  }

  /** Inserts or replaces. */
  set(key: number, value: V): void {
    const leaf = this.#descend(key, true);
    const i = floorIndex(leaf.keys, key);
    if (i >= 0 && leaf.keys[i] === key) {
      leaf.values[i] = value;
      return;
    }
    if (i + 1 === leaf.keys.length) {
      leaf.keys.push(key);
      leaf.values.push(value);
    } else {
      leaf.keys.splice(i + 1, 0, key);
      leaf.values.splice(i + 1, 0, value);
    }
    this.#size++;
    this.#leaf = undefined; // the cursor may point into what moved
    if (i + 1 === 0) this.#fixMin(this.#depth, key);
    if (leaf.keys.length > MAX) this.#split(leaf, this.#depth);
  }

  /** The smallest key of the node below path[0, depth) changed to `key`: the routing keys above it follow. */
  #fixMin(depth: number, key: number): void {
    for (let d = depth - 1; d >= 0; d--) {
      const ci = this.#pathIdx[d]!;
      this.#pathNodes[d]!.keys[ci] = key;
      if (ci !== 0) break;
    }
  }

  /** Splits `node`, the child at path[depth - 1] (the root when depth is 0). */
  #split(node: Node<V>, depth: number): void {
    const half = node.keys.length >>> 1;
    let right: Node<V>;
    if (node.leaf) {
      right = { leaf: true, keys: node.keys.splice(half), values: node.values.splice(half), next: node.next };
      node.next = right;
    } else {
      right = { leaf: false, keys: node.keys.splice(half), children: node.children.splice(half) };
    }
    if (depth === 0) {
      this.#root = { leaf: false, keys: [node.keys[0]!, right.keys[0]!], children: [node, right] };
      return;
    }
    const parent = this.#pathNodes[depth - 1]!;
    const ci = this.#pathIdx[depth - 1]!;
    parent.keys.splice(ci + 1, 0, right.keys[0]!);
    parent.children.splice(ci + 1, 0, right);
    if (parent.keys.length > MAX) this.#split(parent, depth - 1);
  }

  /** Removes `key`; its value, or undefined when it was not there. */
  delete(key: number): V | undefined {
    const leaf = this.#descend(key, true);
    const i = floorIndex(leaf.keys, key);
    if (i < 0 || leaf.keys[i] !== key) return undefined;
    const value = leaf.values[i];
    if (i === 0) {
      leaf.keys.shift();
      leaf.values.shift();
    } else {
      leaf.keys.splice(i, 1);
      leaf.values.splice(i, 1);
    }
    this.#size--;
    this.#leaf = undefined; // the cursor may point into what moved
    if (leaf.keys.length === 0) this.#removeEmpty(leaf, this.#depth);
    else if (i === 0) this.#fixMin(this.#depth, leaf.keys[0]!);
    return value;
  }

  /** Unlinks an empty node (the child at path[depth - 1]) from its parent, and empty parents from theirs. */
  #removeEmpty(node: Node<V>, depth: number): void {
    if (depth === 0) return; // the root stays, empty
    const parent = this.#pathNodes[depth - 1]!;
    const ci = this.#pathIdx[depth - 1]!;
    if (node.leaf) {
      // The leaf before it (in key order) now links past it.
      const prev = this.#leafBefore(depth);
      if (prev) prev.next = node.next;
    }
    parent.keys.splice(ci, 1);
    parent.children.splice(ci, 1);
    if (parent.children.length === 0) this.#removeEmpty(parent, depth - 1);
    else {
      // The parent's smallest key changed: the routing keys above it follow.
      if (ci === 0) this.#fixMin(depth - 1, parent.keys[0]!);
      // A root with one child gives way to it.
      while (!this.#root.leaf && this.#root.children.length === 1) this.#root = this.#root.children[0]!;
    }
  }

  /** The leaf just before the node that path[0, depth) leads to. */
  #leafBefore(depth: number): Leaf<V> | undefined {
    let n: Node<V> | undefined;
    for (let d = depth - 1; d >= 0 && !n; d--) {
      const i = this.#pathIdx[d]!;
      if (i > 0) n = this.#pathNodes[d]!.children[i - 1];
    }
    if (!n) return undefined;
    while (!n.leaf) n = n.children[n.children.length - 1]!;
    return n;
  }

  clear(): void {
    this.#root = { leaf: true, keys: [], values: [], next: undefined };
    this.#size = 0;
    this.#leaf = undefined;
    this.#pathNodes.length = 0;
  }
}
