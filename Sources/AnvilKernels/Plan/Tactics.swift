import AnvilCore
import COneDNN
import Dispatch
import Foundation

/// Timings of tactics measured on one machine, by a key describing the layer, its
/// shapes, the candidate and the machine. Written by `anvil build --timingCacheFile`
/// and read back so a rebuild skips the measurements and makes the same choices.
public final class TimingCache {
    /// Seconds per run and the source and destination layouts the candidate uses.
    public struct Entry: Equatable {
        public var seconds: Double
        public var source: Layout
        public var destination: Layout
    }
    public private(set) var entries: [String: Entry] = [:]
    public private(set) var hits = 0
    public private(set) var measured = 0

    public init() {}

    static let header = "# Anvil timing cache v2: seconds, source layout code, destination layout code, key"

    /// Reads a cache file: one entry per line, "seconds<TAB>source<TAB>destination<TAB>key",
    /// the layouts as `Layout` codes. A cache of another version of Anvil's format is
    /// ignored (its timings are measured again); anything else must parse.
    public init(contentsOf bytes: [UInt8], file: String) throws {
        let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: true)
        if let first = lines.first, first.hasPrefix("# Anvil timing cache"), first != Self.header { return }
        for (number, line) in lines.enumerated() {
            if line.hasPrefix("#") { continue }
            let fields = line.split(separator: "\t", maxSplits: 3, omittingEmptySubsequences: false)
            guard fields.count == 4, let seconds = Double(fields[0]), seconds.isFinite, seconds >= 0, !fields[3].isEmpty,
                  let source = UInt8(fields[1]).flatMap(Layout.init(rawValue:)), let destination = UInt8(fields[2]).flatMap(Layout.init(rawValue:)) else {
                throw AnvilError.invalidModel(file: file, field: "timing cache line \(number + 1)", reason: "is not 'seconds<TAB>source<TAB>destination<TAB>key'")
            }
            entries[String(fields[3])] = Entry(seconds: seconds, source: source, destination: destination)
        }
    }

    /// The cache as text, keys sorted (the same timings give the same bytes).
    public func encoded() -> [UInt8] {
        var text = Self.header + "\n"
        for key in entries.keys.sorted() {
            let e = entries[key]!
            text += "\(e.seconds)\t\(e.source.rawValue)\t\(e.destination.rawValue)\t\(key)\n"
        }
        return Array(text.utf8)
    }

    /// The cached entry for `key`, counted as a hit.
    func cached(_ key: String) -> Entry? {
        guard let e = entries[key] else { return nil }
        hits += 1
        return e
    }

    /// Whether some key satisfies `test`.
    func holds(_ test: (String) -> Bool) -> Bool { entries.keys.contains(where: test) }

    /// Records a measured entry.
    func store(_ key: String, _ e: Entry) {
        measured += 1
        entries[key] = e
    }

    func entry(_ key: String, measure: () throws -> Entry) rethrows -> Entry {
        if let e = entries[key] { hits += 1; return e }
        let e = try measure()
        measured += 1
        entries[key] = e
        return e
    }
}

/// Build-time tactic selection: each convolution is timed in every activation
/// layout oneDNN offers for it (blocked as oneDNN prefers, plain NCHW, channels-last
/// NHWC, nChw16c) and with Winograd where it applies. A tactic's cost is its time plus
/// the reorders it causes: of its input, from the layout its producer writes, and of
/// its output, into the layouts of the convolutions that read it (through layers
/// that keep their input's layout: activations, normalizations, concatenations).
/// A first sweep in layer order picks each tactic knowing only what comes before it;
/// further sweeps revisit every choice against its neighbours' current ones, until no
/// choice changes (coordinate descent on the whole network's modelled time).
public enum TacticSelector {
    /// Sweeps after the first that revisit choices against the layers after them.
    static let refinements = 3

    /// The chosen tactic of every convolution oneDNN takes, by layer name. `types`
    /// gives every value's shape; `machine` names this CPU in the cache keys.
    ///
    /// When other processes keep the cores busy (`LoadProbe`, over the first 50 ms of
    /// timing), candidates are timed on one thread, from the start again, and `busy` hears
    /// the other processes' share of the CPU: a team of threads waits at every barrier for
    /// whichever of them was preempted, which distorts multi-phase kernels (Winograd) far
    /// more than others, while one thread's relative timings survive the load (YOLOv8n built
    /// under a two-core hog: 1.14× the quiet build's latency timed on two threads, 1.04× on
    /// one; on a quiet machine one-thread timing gives 1.02×, so it is kept for busy
    /// machines). One-thread times are cached under `machine` + "|1thread".
    public static func chooseConvolutionTactics(layers: [Layer], constants: ConstantStore, types: [String: (DataType, [Int])],
                                                engine: DNNLEngine, cache: TimingCache, machine: String, winograd: Bool = true,
                                                singleThreaded: Bool = false, busy: ((Double) -> Void)? = nil,
                                                progress: ((Int, Int) -> Void)? = nil) -> [String: ConvolutionTactic] {
        guard let stream = try? DNNLStream(engine: engine) else { return [:] }
        let threads = anvil_parallel_threads()
        // A cache holding this graph's timings taken on one thread (by a build that found the
        // machine busy, which then timed every layer so) is reused as it is: the rebuild measures
        // nothing, whatever the load now.
        let firstSpec = layers.lazy.compactMap { l in types[l.inputs.first ?? ""].flatMap { try? ConvolutionSpec(l, constants: constants, inputShape: $0.1) } }.first
        let oneThreadCache = firstSpec.map { spec in cache.holds { $0.hasPrefix("conv|\(machine)|1thread|\(spec.timingKey)|") } } ?? false
        var singleThreaded = singleThreaded || oneThreadCache, probe: LoadProbe? = singleThreaded ? nil : LoadProbe()
        if singleThreaded { anvil_set_threads(1) }
        defer { if singleThreaded { anvil_set_threads(threads) } }
        var machine = singleThreaded ? machine + "|1thread" : machine
        var chosen: [String: (tactic: ConvolutionTactic, entry: TimingCache.Entry)] = [:]
        var measured: [String: [(tactic: ConvolutionTactic, entry: TimingCache.Entry)]] = [:]
        let total = layers.filter { $0.opKey == "Conv" || $0.opKey == "anvil.FusedConv" }.count
        var done = 0
        var readers: [String: [Layer]] = [:]
        for l in layers { for i in Set(l.inputs) { readers[i, default: []].append(l) } }
        func reorderSeconds(_ shape: [Int], _ from: Layout, _ to: Layout) -> Double {
            guard from != to else { return 0 }
            return (try? cache.entry("reorder|\(machine)|\(shape)|\(from)|\(to)", measure: {
                try timeReorder(shape, from: from, to: to, engine: engine, stream: stream)
            }))?.seconds ?? 0
        }
        /// What a channel split or concatenation reading `value` copies when it is not a view
        /// (it is one on plain and blocked tensors only): the split input, or the whole
        /// concatenated result (a DenseNet block's grows with every layer); nil when none reads it.
        func copiedBy(_ reader: Layer, _ value: String) -> [Int]? {
            if reader.opType == "Split" { return types[value]?.1 }
            if reader.opType == "Concat" { return types[reader.outputs.first ?? ""]?.1 }
            return nil
        }
        func larger(_ a: [Int]?, _ b: [Int]?) -> [Int]? {
            guard let a, let b else { return a ?? b }
            return a.reduce(1, *) >= b.reduce(1, *) ? a : b
        }
        /// The layouts the convolutions reading `value` (directly or through layout-keeping
        /// layers) read, with their input shapes; and the largest tensor a split or
        /// concatenation reading it would copy (`copiedBy`).
        func downstream(of value: String) -> (convolutions: [([Int], Layout)], splitsOrConcats: [Int]?) {
            var found: [([Int], Layout)] = []
            var splits: [Int]? = nil
            var frontier = [value], seen: Set<String> = [value]
            var depth = 0
            while !frontier.isEmpty, depth < 16 {
                depth += 1
                var next: [String] = []
                for v in frontier {
                    for reader in readers[v] ?? [] {
                        if let c = chosen[reader.name] {
                            // Read as the convolution's input, or as the residual its output adds (in its output layout).
                            if reader.inputs.first == v, let (_, shape) = types[v] { found.append((shape, c.entry.source)) }
                            if residual(of: reader) == v, let (_, shape) = types[v] { found.append((shape, c.entry.destination)) }
                            continue
                        }
                        splits = larger(splits, copiedBy(reader, v))
                        guard LoweringTable.outputLayout(of: reader, input: .blocked16) == .blocked16,
                              LoweringTable.outputLayout(of: reader, input: .channelsLast) == .channelsLast else { continue }
                        for o in reader.outputs where seen.insert(o).inserted { next.append(o) }
                    }
                }
                frontier = next
            }
            return (found, splits)
        }
        var sweep = 0
        while sweep <= refinements {
            defer { sweep += 1 }
            var layoutOf: [String: Layout] = [:]
            var changed = false
            var restart = false
            for layer in layers {
                let input = layer.inputs.first ?? ""
                let inputLayout = layoutOf[input] ?? .plain
                guard layer.decision.map({ $0.kernel == .convolution }) ?? true, let (t, shape) = types[input], t == .float,
                      sweep == 0 || measured[layer.name] != nil,
                      var spec = try? ConvolutionSpec(layer, constants: constants, inputShape: shape) else {
                    for o in layer.outputs { layoutOf[o] = LoweringTable.outputLayout(of: layer, input: inputLayout) }
                    continue
                }
                // Timed as runs on finite inputs take it (ExecutionPlan.assumesFiniteInputs).
                spec.exactNonFinite = false
                if sweep == 0 {
                    measured[layer.name] = measure(spec, winograd: winograd, cache: cache, machine: machine, engine: engine, stream: stream)
                    if let p = probe, let load = p.load() {
                        probe = nil
                        if load > busyLoad {
                            // A busy machine: everything again, timed on one thread.
                            busy?(load)
                            singleThreaded = true
                            anvil_set_threads(1)
                            machine += "|1thread"
                            restart = true
                            break
                        }
                    }
                }
                let output = layer.outputs.first ?? ""
                let after = sweep == 0 ? (convolutions: [], splitsOrConcats: (readers[output] ?? []).reduce(nil) { larger($0, copiedBy($1, output)) })
                                       : downstream(of: output)
                var costs: [(cost: Double, tactic: ConvolutionTactic, destination: Layout)] = []
                for (tactic, e) in measured[layer.name] ?? [] {
                    var cost = e.seconds + reorderSeconds(shape, inputLayout, e.source)
                    if let r = residual(of: layer), let (_, residualShape) = types[r] {
                        cost += reorderSeconds(residualShape, layoutOf[r] ?? .plain, e.destination)
                    }
                    for (readShape, layout) in after.convolutions { cost += reorderSeconds(readShape, e.destination, layout) }
                    if e.destination == .channelsLast, let copied = after.splitsOrConcats { cost += reorderSeconds(copied, .channelsLast, .plain) }
                    costs.append((cost, tactic, e.destination))
                }
                if let best = choose(costs), let e = measured[layer.name]?.first(where: { $0.tactic == best.tactic })?.entry {
                    if chosen[layer.name]?.tactic != best.tactic { changed = true }
                    chosen[layer.name] = (best.tactic, e)
                    for o in layer.outputs { layoutOf[o] = best.destination }
                } else {
                    for o in layer.outputs { layoutOf[o] = LoweringTable.outputLayout(of: layer, input: inputLayout) }
                }
                if sweep == 0 {
                    done += 1
                    progress?(done, total)
                }
            }
            if restart {
                (measured, chosen, done, sweep) = ([:], [:], 0, -1)
                continue
            }
            if sweep > 0 && !changed { break }
        }
        return chosen.mapValues(\.tactic)
    }

    /// The residual a fused convolution adds to its output (its fourth input), if any.
    static func residual(of layer: Layer) -> String? {
        guard layer.opKey == "anvil.FusedConv", layer.inputs.count > 3, !layer.inputs[3].isEmpty else { return nil }
        return layer.inputs[3]
    }

    /// Every candidate's time for one convolution: from the cache, or measured with the others, interleaved.
    /// FP16 layers take no Winograd tactic: its transformed weights are not FP16 values and would
    /// be stored in FP32 beside the plain constant, four times the bytes FP16 storage is for.
    static func measure(_ spec: ConvolutionSpec, winograd: Bool, cache: TimingCache, machine: String, engine: DNNLEngine,
                        stream: DNNLStream) -> [(tactic: ConvolutionTactic, entry: TimingCache.Entry)] {
        let candidates = ConvolutionTactic.candidates(kernel: spec.kernel, strides: spec.geometry.strides, dilations: spec.geometry.dilations, group: spec.group)
            .filter { (winograd && spec.precision != .fp16) || $0.algorithm != .winograd }
        let key = { (tactic: ConvolutionTactic) in "conv|\(machine)|\(spec.timingKey)|\(tactic)" }
        var entries: [ConvolutionTactic: TimingCache.Entry] = [:]
        for tactic in candidates { if let e = cache.cached(key(tactic)) { entries[tactic] = e } }
        let missing = candidates.filter { entries[$0] == nil }
        if !missing.isEmpty {
            for (tactic, e) in spec.timeInterleaved(missing, engine: engine, stream: stream) {
                entries[tactic] = e
                cache.store(key(tactic), e)
            }
        }
        // Not implemented for these shapes, or only as oneDNN's reference: not a candidate.
        return candidates.compactMap { t in entries[t].map { (t, $0) } }
    }

    /// Times within this fraction of the fastest are a tie that measurements on a shared
    /// machine cannot break.
    public static let tie = 0.03

    /// Outside load above which tactics are timed on one thread.
    public static let busyLoad = 0.25

    /// The most measurement noise `settled` makes candidates equal for.
    public static let noiseLimit = 0.25

    /// Each candidate's time from its rounds' best times: its minimum (load only ever adds
    /// time), except where the measurements cannot tell it from the fastest. How
    /// reproducible a minimum is here is the median over candidates of how far the
    /// second-best round lies above the best: a few percent on a quiet machine, tens of
    /// percent while other processes take the cores. When that noise exceeds `tie`,
    /// candidates within it of the fastest (at most `noiseLimit`) get the fastest's time,
    /// so the choice among them falls to the reorders they cause and the structurally
    /// expected tactic (`choose`), not to noise.
    public static func settled(_ rounds: [[Double]]) -> [Double] {
        let minima = rounds.map { $0.filter(\.isFinite).min() ?? .infinity }
        let spreads = rounds.compactMap { r -> Double? in
            let sorted = r.filter(\.isFinite).sorted()
            return sorted.count >= 2 && sorted[0] > 0 ? sorted[1] / sorted[0] - 1 : nil
        }.sorted()
        let noise = spreads.isEmpty ? 0 : min(spreads[spreads.count / 2], noiseLimit)
        guard noise > tie, let best = minima.min(), best.isFinite else { return minima }
        return minima.map { $0 <= best * (1 + noise) ? best : $0 }
    }

    /// The fastest candidate; among those within `tie` of it, the structurally expected
    /// one (oneDNN's own layout choice first, Winograd, which rounds differently, last).
    public static func choose(_ costs: [(cost: Double, tactic: ConvolutionTactic, destination: Layout)]) -> (cost: Double, tactic: ConvolutionTactic, destination: Layout)? {
        guard let fastest = costs.map(\.cost).min() else { return nil }
        return costs.filter { $0.cost <= fastest * (1 + tie) }.min { ($0.tactic.preference, $0.cost) < ($1.tactic.preference, $1.cost) }
    }

    /// Best of five runs, after one warm-up (reorders between layouts).
    static func bestTime(_ body: () throws -> Void) throws -> Double {
        try body()
        var best = Double.infinity
        for _ in 0..<5 {
            let start = DispatchTime.now().uptimeNanoseconds
            try body()
            best = min(best, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        return best
    }

    static func timeReorder(_ shape: [Int], from: Layout, to: Layout, engine: DNNLEngine, stream: DNNLStream) throws -> TimingCache.Entry {
        guard let a = try from.descriptor(shape), let b = try to.descriptor(shape), from != .preferred, to != .preferred else {
            return TimingCache.Entry(seconds: 0, source: from, destination: to)
        }
        var ma = a, mb = b
        let source = UnsafeMutableRawPointer.allocate(byteCount: max(anvil_dnnl_md_size(&ma), 64), alignment: 64)
        let target = UnsafeMutableRawPointer.allocate(byteCount: max(anvil_dnnl_md_size(&mb), 64), alignment: 64)
        defer { source.deallocate(); target.deallocate() }
        source.initializeMemory(as: UInt8.self, repeating: 0, count: anvil_dnnl_md_size(&ma))
        let reorder = try reorderPrimitive(from: a, to: b, engine: engine)
        let memories = [try DNNLMemory(a, engine: engine, data: source), try DNNLMemory(b, engine: engine, data: target)]
        let seconds = try bestTime { try reorder.execute(stream, [(DNNL_ARG_FROM, memories[0]), (DNNL_ARG_TO, memories[1])]) }
        return TimingCache.Entry(seconds: seconds, source: from, destination: to)
    }
}

/// One candidate of an interleaved timing: its kernel, zeroed buffers, its times.
private final class Trial {
    let tactic: ConvolutionTactic
    let conv: DNNLConvolution
    let source: UnsafeMutableRawPointer, target: UnsafeMutableRawPointer
    /// The best time of each round.
    var rounds: [Double] = []

    init(_ tactic: ConvolutionTactic, _ conv: DNNLConvolution) {
        self.tactic = tactic
        self.conv = conv
        source = .allocate(byteCount: max(conv.inputDescriptor.byteCount, 64), alignment: 64)
        target = .allocate(byteCount: max(conv.outputDescriptor.byteCount, 64), alignment: 64)
        source.initializeMemory(as: UInt8.self, repeating: 0, count: conv.inputDescriptor.byteCount)
        target.initializeMemory(as: UInt8.self, repeating: 0, count: conv.outputDescriptor.byteCount)
    }

    deinit { source.deallocate(); target.deallocate() }

    /// Seconds of one run.
    func once(_ stream: DNNLStream) throws -> Double {
        let start = DispatchTime.now().uptimeNanoseconds
        try conv.runInPlace(stream: stream, input: source, output: target)
        return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
    }
}

extension ConvolutionSpec {
    /// Times `tactics` against each other on zeros, interleaved so that outside load hits
    /// them alike: rounds visit every candidate in a rotating order, each round keeping a
    /// candidate's best of two runs; a candidate's time is its minimum over rounds (load
    /// only ever adds time). At least three rounds, more (up to eight) while the last three
    /// rounds disagree on the winner; candidates the noise of these rounds cannot tell
    /// apart are recorded as equally fast (`TacticSelector.settled`). A candidate whose warm-up (its second run: the first
    /// pays one-time costs) takes three times the fastest warm-up is dropped; one oneDNN
    /// runs only on its reference implementation, or does not implement, is never a
    /// candidate. Entries record the layouts each reads and writes.
    func timeInterleaved(_ tactics: [ConvolutionTactic], engine: DNNLEngine, stream: DNNLStream) -> [ConvolutionTactic: TimingCache.Entry] {
        var trials: [(Trial, warmUp: Double)] = []
        for tactic in tactics {
            guard let conv = try? make(tactic, engine: engine), !conv.kernel.primitive.isReference else { continue }
            let trial = Trial(tactic, conv)
            // The first run pays one-time costs (page faults on fresh buffers, cold code): the second is the warm-up that counts.
            guard (try? trial.once(stream)) != nil, let warmUp = try? trial.once(stream) else { continue }
            trials.append((trial, warmUp))
        }
        guard let fastest = trials.map(\.warmUp).min() else { return [:] }
        let alive = trials.filter { $0.warmUp <= 3 * fastest }.map(\.0)
        var entries: [ConvolutionTactic: TimingCache.Entry] = [:]
        func entry(_ trial: Trial, _ seconds: Double) -> TimingCache.Entry {
            TimingCache.Entry(seconds: seconds, source: Layout.of(trial.conv.inputDescriptor.descriptor, shape: inputShape),
                              destination: Layout.of(trial.conv.outputDescriptor.descriptor, shape: trial.conv.outputShape))
        }
        // The slow ones keep their warm-up time (recorded, so a rebuild with the cache times nothing).
        for (trial, warmUp) in trials where warmUp > 3 * fastest { entries[trial.tactic] = entry(trial, warmUp) }
        for round in 0..<8 {
            for i in alive.indices {
                let trial = alive[(i + round) % alive.count]
                let best = (try? min(trial.once(stream), trial.once(stream))) ?? .infinity
                trial.rounds.append(best)
            }
            guard round >= 2 else { continue }
            let winners = (round - 2...round).map { r in alive.indices.min { alive[$0].rounds[r] < alive[$1].rounds[r] } }
            if Set(winners).count == 1 { break }
        }
        for (trial, seconds) in zip(alive, TacticSelector.settled(alive.map(\.rounds))) where seconds.isFinite {
            entries[trial.tactic] = entry(trial, seconds)
        }
        return entries
    }
}

/// How much of the machine other processes use while this one works: /proc/stat's busy
/// ticks of all CPUs minus this process's own CPU time, over the time since the probe
/// was made.
public struct LoadProbe {
    let start: (busy: Double, total: Double, own: Double)?

    public init() { start = Self.sample() }

    static func sample() -> (busy: Double, total: Double, own: Double)? {
        guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("cpu ") }) else { return nil }
        let fields = line.split(separator: " ").dropFirst().compactMap { Double($0) }
        guard fields.count >= 5 else { return nil }
        // user nice system idle iowait irq softirq steal …: idle and iowait are not busy.
        let total = fields.prefix(8).reduce(0, +), idle = fields[3] + fields[4]
        var usage = rusage()
        guard getrusage(RUSAGE_SELF.rawValue, &usage) == 0 else { return nil }
        let seconds = Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6 + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
        return (total - idle, total, seconds * Double(sysconf(Int32(_SC_CLK_TCK))))
    }

    /// Other processes' share of all CPUs (0 to 1) since the probe was made; nil until
    /// `minimumTicks` ticks of CPU time (all CPUs together) have passed, or without /proc.
    public func load(minimumTicks: Double = 10) -> Double? {
        guard let a = start, let b = Self.sample(), b.total - a.total >= minimumTicks else { return nil }
        return min(max((b.busy - a.busy - (b.own - a.own)) / (b.total - a.total), 0), 1)
    }
}
