import AnvilCore

/// A memory plan as an engine file stores it: the arena's size and, by the first
/// value each buffer holds, its size and offset. A plan adopts it only after
/// checking that it fits its own buffers and that no two live buffers overlap.
public struct StoredMemoryPlan: Sendable, Equatable {
    public struct Placement: Sendable, Equatable {
        public var bytes: Int
        public var offset: Int
        public init(bytes: Int, offset: Int) { self.bytes = bytes; self.offset = offset }
    }
    public var arenaBytes: Int
    public var buffers: [String: Placement]

    public init(arenaBytes: Int, buffers: [String: Placement]) {
        self.arenaBytes = arenaBytes
        self.buffers = buffers
    }
}

/// One buffer of a plan's activation arena: its size, its live range in steps, its
/// offset once placed, and the values it holds (the first names it).
struct ArenaBuffer {
    var bytes: Int
    var first: Int
    var last: Int
    var offset = 0
    var names: [String]
    /// Set when the buffer lives inside another (a concatenation's part): that buffer and the byte offset.
    var parent: (buffer: Int, offset: Int)?
}

/// Places a plan's buffers in one arena: every buffer lives from the first step that
/// writes it to the last that reads it, and buffers whose lives overlap never share
/// bytes. Largest first, each at the lowest 64-byte-aligned offset free for its whole
/// life; or the engine file's stored placement, once checked.
enum MemoryPlanner {
    /// Extends the buffers' live ranges by what each step reads and writes (step
    /// indices), places them, and returns the arena size and whether `stored` was adopted.
    static func assign(_ buffers: inout [ArenaBuffer], steps: [(reads: [Int], writes: [Int])], stored: StoredMemoryPlan?) -> (arenaBytes: Int, adopted: Bool) {
        // A buffer placed inside another lives as long as it; only roots are placed.
        func root(_ b: Int) -> (Int, Int) {
            var b = b, delta = 0
            while let p = buffers[b].parent { delta += p.offset; b = p.buffer }
            return (b, delta)
        }
        for (i, step) in steps.enumerated() {
            for b in step.reads where b >= 0 {
                let r = root(b).0
                buffers[r].last = max(buffers[r].last, i)
            }
            for b in step.writes where b >= 0 {
                let r = root(b).0
                buffers[r].first = min(buffers[r].first, i)
                buffers[r].last = max(buffers[r].last, i)
            }
        }
        for b in buffers.indices where buffers[b].parent != nil {
            let r = root(b).0
            buffers[r].first = min(buffers[r].first, buffers[b].first)
            buffers[r].last = max(buffers[r].last, buffers[b].last)
        }
        let roots = buffers.indices.filter { buffers[$0].parent == nil }
        let total: Int, adopted: Bool
        if let stored, adopt(stored, roots: roots, &buffers) {
            (total, adopted) = (stored.arenaBytes, true)
        } else {
            (total, adopted) = (place(roots, &buffers), false)
        }
        for b in buffers.indices where buffers[b].parent != nil {
            let (r, delta) = root(b)
            buffers[b].offset = buffers[r].offset + delta
            buffers[b].first = buffers[r].first
            buffers[b].last = buffers[r].last
        }
        return (total, adopted)
    }

    static func aligned(_ bytes: Int) -> Int { (bytes + 63) / 64 * 64 }

    /// Takes the offsets of a stored plan when it has every root buffer with its size,
    /// all inside its arena, and no two buffers live at once overlap.
    static func adopt(_ stored: StoredMemoryPlan, roots: [Int], _ buffers: inout [ArenaBuffer]) -> Bool {
        guard stored.buffers.count == roots.count, stored.arenaBytes >= 0 else { return false }
        var offsets: [Int] = []
        var end = 0
        for b in roots {
            guard let name = buffers[b].names.first, let s = stored.buffers[name], s.bytes == buffers[b].bytes,
                  s.offset >= 0, s.offset % 64 == 0, s.offset <= stored.arenaBytes - aligned(s.bytes) else { return false }
            offsets.append(s.offset)
            end = max(end, s.offset + aligned(s.bytes))
        }
        // The arena is exactly as large as its buffers reach (a file cannot ask for more).
        guard stored.arenaBytes == end else { return false }
        // Sweep the buffers by offset: each must not overlap, while both live, the ones still open.
        let order = roots.indices.sorted { offsets[$0] < offsets[$1] }
        var open: [Int] = []
        for i in order {
            let a = buffers[roots[i]]
            open.removeAll { offsets[$0] + buffers[roots[$0]].bytes <= offsets[i] }
            for j in open {
                let b = buffers[roots[j]]
                if a.first <= b.last && b.first <= a.last { return false }
            }
            open.append(i)
        }
        for (i, b) in roots.enumerated() { buffers[b].offset = offsets[i] }
        return true
    }

    /// Places root buffers by liveness, largest first, each at the lowest offset free
    /// during its life; returns the arena size.
    static func place(_ roots: [Int], _ buffers: inout [ArenaBuffer]) -> Int {
        let order = roots.sorted { (buffers[$0].bytes, $1) > (buffers[$1].bytes, $0) }
        var placed: [Int] = []
        var total = 0
        for b in order {
            let size = aligned(buffers[b].bytes)
            let overlapping = placed.filter { buffers[$0].first <= buffers[b].last && buffers[b].first <= buffers[$0].last }
                .map { (buffers[$0].offset, aligned(buffers[$0].bytes)) }.sorted { $0.0 < $1.0 }
            var offset = 0
            for (start, length) in overlapping {
                if offset + size <= start { break }
                offset = max(offset, start + length)
            }
            buffers[b].offset = offset
            placed.append(b)
            total = max(total, offset + size)
        }
        return total
    }

    /// The placement of the root buffers in the form an engine file stores.
    static func stored(_ buffers: [ArenaBuffer], arenaBytes: Int) -> StoredMemoryPlan {
        var stored = StoredMemoryPlan(arenaBytes: arenaBytes, buffers: [:])
        for b in buffers where b.parent == nil { if let name = b.names.first { stored.buffers[name] = .init(bytes: b.bytes, offset: b.offset) } }
        return stored
    }
}
