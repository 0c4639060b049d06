import AnvilBuilder
import AnvilCore
import AnvilEngine
import AnvilKernels
import AnvilONNX
import AnvilRuntime
import ArgumentParser
import Foundation

/// `anvil soak`: several threads share one engine, each with its own execution context,
/// for a long time, on inputs of varying shapes; every result is compared bit for bit
/// with a run of the same inputs on one thread, and the process's resident memory is
/// sampled every second. Steady means: no mismatch, no error, and memory at the end no
/// higher than after the warm-up (plans and kernels made) beyond a tolerance.
struct Soak: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run an engine on several threads at once for a long time, checking every result against a one-thread run and sampling memory.")

    @Argument(help: "An engine file or an ONNX model.") var model: String
    @Option(help: "Threads running inferences at once, each with its own context.") var streams: Int = 4
    @Option(help: "Seconds to run.") var duration: Double = 600
    @Option(help: "Sizes of dynamic dimensions, drawn per input set: SYMBOL[,SYMBOL…]=LO..HI (repeatable; listed symbols share a size); others take the build-time size.")
    var sizes: [String] = []
    @Option(name: .customLong("inputSets"), help: "Distinct input sets (random values and sizes) the streams cycle through.") var inputSets: Int = 12
    @Option(help: "oneDNN threads per stream (default: the cores divided among the streams).") var threads: Int?
    @Option(help: "Largest growth of resident memory from after the warm-up to the end, in percent.") var tolerance: Double = 10

    @OptionGroup var limits: LimitOptions

    func run() throws {
        try Anvil.guarded(limits) {
            guard streams >= 1, streams <= 256, duration > 0, inputSets >= 1, inputSets <= 10_000, tolerance >= 0 else {
                throw AnvilError.invalidArgument("--streams must be in 1...256, --duration and --tolerance positive, --inputSets in 1...10000")
            }
            let perStream = threads ?? max(1, ProcessInfo.processInfo.activeProcessorCount / streams)
            try setThreads(perStream)
            let engine = try engineOrBuilt(model)
            let sets = try makeInputSets(engine)
            // The expected results, on a thread of its own like the streams': each set twice on a fresh
            // context. A dynamic engine's first run of new shapes goes through the layer interpreter
            // (which observes the shapes the plan is made from), later runs through the plan; a
            // stream evicting and remaking plans meets both, so a result must equal one of the two.
            let expected = try onThread(threads: perStream) { () -> [[[Tensor]]] in
                try sets.map { set in
                    let context = ExecutionContext(engine: engine)
                    return try (0..<2).map { _ in try context.run(set).map(\.value) }
                }
            }
            print("Soak: \(streams) streams × \(f(duration)) s, \(perStream) oneDNN thread(s) each, \(sets.count) input sets: "
                  + sets.map { set in engine.inputs.map { set[$0.name]!.shape.map(String.init).joined(separator: "x") }.joined(separator: "/") }.joined(separator: " "))
            let tally = SoakTally(streams: streams)
            let deadline = Date().addingTimeInterval(duration)
            let done = DispatchGroup()
            for stream in 0..<streams {
                done.enter()
                let thread = Thread {
                    defer { done.leave() }
                    DNNLThreads.set(perStream)
                    let context = ExecutionContext(engine: engine)
                    var rng = SeededGenerator(seed: UInt64(1000 + stream))
                    while Date() < deadline {
                        let k = Int.random(in: 0..<sets.count, using: &rng)
                        do {
                            let outputs = try context.run(sets[k]).map(\.value)
                            let differs = expected[k].contains(outputs) ? nil : zip(outputs, expected[k][1]).map { a, e in
                                Comparison.compare(actual: a, expected: e, atol: 0, rtol: 0).maxAbsoluteError }.max()
                            tally.record(stream: stream, mismatch: differs.map { "stream \(stream), input set \(k): outputs differ from the one-thread run by up to \($0)" })
                        } catch {
                            tally.record(stream: stream, error: "stream \(stream), input set \(k): \(error)")
                        }
                    }
                }
                thread.stackSize = 16 << 20
                thread.start()
            }
            var samples: [Double] = []
            while done.wait(timeout: .now() + 1) == .timedOut { samples.append(residentMegabytes()) }
            samples.append(residentMegabytes())
            try report(tally, samples: samples)
        }
    }

    /// `inputSets` sets of inputs: dynamic sizes drawn from --sizes, values random.
    func makeInputSets(_ engine: Engine) throws -> [[String: Tensor]] {
        var ranges: [String: ClosedRange<Int>] = [:]
        for spec in sizes {
            let parts = spec.split(separator: "=", maxSplits: 1).map(String.init)
            let bounds = parts.count == 2 ? parts[1].components(separatedBy: "..").compactMap { Int($0) } : []
            guard parts.count == 2, bounds.count == 2, bounds[0] >= 1, bounds[0] <= bounds[1] else {
                throw AnvilError.invalidArgument("--sizes '\(spec)' is not SYMBOL=LO..HI with 1 ≤ LO ≤ HI")
            }
            // Symbols that must agree (one per input, as some exporters name them) share a draw.
            ranges[parts[0]] = bounds[0]...bounds[1]
        }
        let symbols = Set(engine.inputs.flatMap { $0.type.dims ?? [] }.compactMap { d -> String? in if case .symbol(let s) = d { s } else { nil } })
        for group in ranges.keys {
            for name in group.split(separator: ",").map(String.init) where !symbols.contains(name) {
                throw AnvilError.invalidArgument("--sizes names '\(name)', which no input's shape has (symbols: \(symbols.sorted().joined(separator: ", ")))")
            }
        }
        let defaults = try engine.sampleInputs()
        var rng = SeededGenerator(seed: 7)
        return try (0..<inputSets).map { _ in
            var drawn: [String: Int] = [:]
            for (group, range) in ranges.sorted(by: { $0.key < $1.key }) {
                let v = Int.random(in: range, using: &rng)
                for name in group.split(separator: ",") { drawn[String(name)] = v }
            }
            var set: [String: Tensor] = [:]
            for (name, type) in engine.inputs {
                let fallback = defaults[name]!.shape
                let shape = (type.dims ?? []).enumerated().map { i, d -> Int in
                    if case .symbol(let s) = d, let v = drawn[s] { return v }
                    return i < fallback.count ? fallback[i] : 1
                }
                let n = shape.reduce(1, *), element = type.elementType ?? .float
                set[name] = element.isFloatingPoint
                    ? try Tensor(element, shape: shape, floats: (0..<n).map { _ in Float.random(in: -1...1, using: &rng) })
                    : try Tensor(element, shape: shape, int64s: (0..<n).map { _ in Int64.random(in: 0...1, using: &rng) })
            }
            return set
        }
    }

    func report(_ tally: SoakTally, samples: [Double]) throws {
        let runs = tally.runs, total = runs.reduce(0, +)
        print("Runs: \(total) (\(f(Double(total) / duration)) per second), per stream \(runs.map(String.init).joined(separator: ", "))")
        let mismatches = tally.mismatches, errors = tally.errors
        print("Mismatches: \(mismatches.count), errors: \(errors.count)")
        for line in (mismatches.first + errors.first).prefix(5) { print("  \(line)") }
        // After the warm-up (the first tenth: plans and kernels being made) against the last tenth.
        let tenth = max(1, samples.count / 10)
        let settled = samples.dropFirst(tenth).prefix(tenth), last = samples.suffix(tenth)
        let before = settled.isEmpty ? samples[0] : settled.reduce(0, +) / Double(settled.count)
        let after = last.reduce(0, +) / Double(last.count)
        let growth = (after / before - 1) * 100
        print("Resident memory: \(samples.count) samples, after warm-up \(f(before)) MB, at the end \(f(after)) MB (\(growth >= 0 ? "+" : "")\(f(growth))%), "
              + "peak \(f(samples.max() ?? 0)) MB")
        var problems: [String] = []
        if mismatches.count > 0 { problems.append("\(mismatches.count) results differ from the one-thread run") }
        if errors.count > 0 { problems.append("\(errors.count) runs failed") }
        if runs.contains(0) { problems.append("a stream made no run") }
        if growth > tolerance { problems.append("resident memory grew by \(f(growth))%, over the \(f(tolerance))% tolerance") }
        guard problems.isEmpty else { throw AnvilError.invalidArgument("soak failed: " + problems.joined(separator: "; ")) }
        print("Steady: every result identical to the one-thread run, memory within \(f(tolerance))%")
    }

    /// Runs `body` on a new thread with `threads` oneDNN threads and waits for it.
    func onThread<T>(threads: Int, _ body: @escaping () throws -> T) throws -> T {
        nonisolated(unsafe) var result: Result<T, Error>?
        nonisolated(unsafe) let work = body
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            DNNLThreads.set(threads)
            result = Result { try work() }
            done.signal()
        }
        thread.stackSize = 16 << 20
        thread.start()
        done.wait()
        return try result!.get()
    }

    /// The process's resident set, from /proc/self/statm.
    func residentMegabytes() -> Double {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = Double(fields[1]) else { return 0 }
        return pages * Double(sysconf(Int32(_SC_PAGESIZE))) / 1_048_576
    }

    func f(_ v: Double) -> String { String(format: "%.4g", v) }
}

/// Runs, mismatches and errors per stream, shared by the stream threads.
final class SoakTally: @unchecked Sendable {
    private let lock = NSLock()
    private var counts: [Int]
    private var mismatchList: [String] = [], mismatchCount = 0
    private var errorList: [String] = [], errorCount = 0

    init(streams: Int) { counts = Array(repeating: 0, count: streams) }

    func record(stream: Int, mismatch: String? = nil, error: String? = nil) {
        lock.lock()
        defer { lock.unlock() }
        counts[stream] += 1
        if let mismatch { mismatchCount += 1; if mismatchList.count < 5 { mismatchList.append(mismatch) } }
        if let error { errorCount += 1; if errorList.count < 5 { errorList.append(error) } }
    }

    var runs: [Int] { lock.lock(); defer { lock.unlock() }; return counts }
    /// How many results differed and how many runs failed, with the first few of each.
    var mismatches: (count: Int, first: [String]) { lock.lock(); defer { lock.unlock() }; return (mismatchCount, mismatchList) }
    var errors: (count: Int, first: [String]) { lock.lock(); defer { lock.unlock() }; return (errorCount, errorList) }
}
