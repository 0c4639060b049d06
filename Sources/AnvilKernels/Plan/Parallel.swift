import COneDNN

/// Work split between the threads of oneDNN's OpenMP team. Between layers those threads
/// spin-wait for oneDNN's next kernel; a Swift kernel that split its work onto other
/// threads (Dispatch) would compete with them for the cores instead of using them.
public enum Parallel {
    /// Calls `body(part)` once for every part in `0..<parts`, on the OpenMP team (as many
    /// threads as `--threads` gave oneDNN), serially when there is one part or no team.
    static func forEach(_ parts: Int, _ body: @Sendable (Int) -> Void) {
        guard parts > 1 else {
            if parts == 1 { body(0) }
            return
        }
        withoutActuallyEscaping(body) { escapable in
            var work = escapable
            withUnsafeMutablePointer(to: &work) { context in
                anvil_parallel(Int32(clamping: parts), { context, part in
                    context!.assumingMemoryBound(to: (@Sendable (Int) -> Void).self).pointee(Int(part))
                }, context)
            }
        }
    }

    /// Splits `count` items into contiguous ranges, one per part, and runs them with
    /// `forEach`: `parts` ranges when the work is large enough to pay for the threads.
    static func ranges(_ count: Int, parts: Int, _ body: @Sendable (Range<Int>) -> Void) {
        let parts = max(1, min(parts, count))
        forEach(parts) { part in body((count * part / parts)..<(count * (part + 1) / parts)) }
    }

    /// The number of threads in the team (oneDNN's thread count).
    public static var threads: Int { Int(anvil_parallel_threads()) }

    /// Elements of work below which a kernel runs on one thread: starting the team costs
    /// more than the work (a few microseconds).
    static let minimumElements = 1 << 15

    /// How many parts a kernel touching `elements` elements splits into: the team's
    /// threads when that pays, else one.
    static func parts(forElements elements: Int) -> Int { elements >= minimumElements ? threads : 1 }
}
