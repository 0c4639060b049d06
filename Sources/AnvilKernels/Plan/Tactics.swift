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
        public var source: String
        public var destination: String
    }
    public private(set) var entries: [String: Entry] = [:]
    public private(set) var hits = 0
    public private(set) var measured = 0

    public init() {}

    /// Reads a cache file: one entry per line, "seconds<TAB>source<TAB>destination<TAB>key".
    public init(contentsOf bytes: [UInt8], file: String) throws {
        for (number, line) in String(decoding: bytes, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: true).enumerated() {
            if line.hasPrefix("#") { continue }
            let fields = line.split(separator: "\t", maxSplits: 3, omittingEmptySubsequences: false)
            guard fields.count == 4, let seconds = Double(fields[0]), seconds.isFinite, seconds >= 0, !fields[3].isEmpty else {
                throw AnvilError.invalidModel(file: file, field: "timing cache line \(number + 1)", reason: "is not 'seconds<TAB>source<TAB>destination<TAB>key'")
            }
            entries[String(fields[3])] = Entry(seconds: seconds, source: String(fields[1]), destination: String(fields[2]))
        }
    }

    /// The cache as text, keys sorted (the same timings give the same bytes).
    public func encoded() -> [UInt8] {
        var text = "# Anvil timing cache v1: seconds, source layout, destination layout, key\n"
        for key in entries.keys.sorted() {
            let e = entries[key]!
            text += "\(e.seconds)\t\(e.source)\t\(e.destination)\t\(key)\n"
        }
        return Array(text.utf8)
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
/// NHWC), and the layout with the smallest time, counting the reorder its input
/// would need from the layout its producer chose, is kept.
public enum TacticSelector {
    /// Returns the chosen tactic ("onednn:blocked", "onednn:plain", "onednn:nhwc") by layer name.
    /// `types` gives every value's shape; `machine` names this CPU in the cache keys.
    public static func chooseConvolutionLayouts(layers: [Layer], constants: ConstantStore, types: [String: (DataType, [Int])],
                                                engine: DNNLEngine, cache: TimingCache, machine: String, winograd: Bool = true,
                                                progress: ((Int, Int) -> Void)? = nil) -> [String: String] {
        var layoutOf: [String: String] = [:]
        var chosen: [String: String] = [:]
        let convolutions = layers.filter { ($0.opType == "Conv" && $0.domain.isEmpty) || ($0.opType == "FusedConv" && $0.domain == "ai.anvil") }
        var done = 0
        let stream = try? DNNLStream(engine: engine)
        // Channel splits and concatenations are free (views) on plain and channel-blocked
        // tensors, but need reorders of channels-last ones.
        var consumers: [String: [String]] = [:]
        for l in layers { for i in l.inputs { consumers[i, default: []].append(l.opType) } }
        for layer in layers {
            let input = layer.inputs.first ?? ""
            let inputLayout = layoutOf[input] ?? "plain"
            guard layer.tactic.hasPrefix("onednn"), convolutions.contains(where: { $0.name == layer.name }), let stream,
                  let (t, shape) = types[input], t == .float,
                  let spec = try? ConvolutionSpec(layer, constants: constants, inputShape: shape) else {
                // Layout-preserving layers pass their input's layout on; the rest produce plain tensors.
                let preserving: Set<String> = ["MaxPool", "AveragePool", "Relu", "Sigmoid", "Tanh", "LeakyRelu", "Clip", "HardSwish", "Add", "Mul", "Concat", "Resize"]
                for o in layer.outputs { layoutOf[o] = preserving.contains(layer.opType) ? inputLayout : "plain" }
                continue
            }
            var best: (cost: Double, tactic: ConvolutionTactic, destination: String)?
            let candidates = ConvolutionTactic.candidates(kernel: spec.kernel, strides: spec.geometry.strides, dilations: spec.geometry.dilations, group: spec.group)
            for tactic in candidates where winograd || !tactic.winograd {
                let key = "conv|\(machine)|\(spec.key)|\(tactic.rawValue)"
                let limit = 3 * (best?.cost ?? .infinity)
                // A candidate oneDNN does not implement for these shapes is skipped (and not cached).
                guard let e = try? cache.entry(key, measure: { try spec.time(tactic, engine: engine, stream: stream, limit: limit) }) else { continue }
                var cost = e.seconds
                if e.source != inputLayout, let r = try? cache.entry("reorder|\(machine)|\(shape)|\(inputLayout)|\(e.source)", measure: {
                    try timeReorder(shape, from: inputLayout, to: e.source, engine: engine, stream: stream)
                }) {
                    cost += r.seconds
                }
                if e.destination == "nhwc", let output = layer.outputs.first, let (_, outShape) = types[output],
                   consumers[output, default: []].contains(where: { $0 == "Split" || $0 == "Concat" }),
                   let r = try? cache.entry("reorder|\(machine)|\(outShape)|nhwc|plain", measure: {
                       try timeReorder(outShape, from: "nhwc", to: "plain", engine: engine, stream: stream)
                   }) {
                    cost += r.seconds
                }
                if best == nil || cost < best!.cost { best = (cost, tactic, e.destination) }
            }
            if let best {
                chosen[layer.name] = "onednn:" + best.tactic.rawValue
                for o in layer.outputs { layoutOf[o] = best.destination }
            }
            done += 1
            progress?(done, convolutions.count)
        }
        return chosen
    }

    /// The layout class of a descriptor: "plain", "nhwc", "blocked16", "blocked8" or "other".
    static func layoutClass(_ d: dnnl_memory_desc_t, shape: [Int]) -> String {
        if ExecutionPlan.isPlain(d, shape) { return "plain" }
        switch try? SwiftKernels.channelLayout(d, shape: shape) {
        case .channelsLast?: return "nhwc"
        case .blocked(let n)?: return "blocked\(n)"
        default: return "other"
        }
    }

    static func descriptor(_ layoutClass: String, shape: [Int]) throws -> dnnl_memory_desc_t? {
        let rank = shape.count
        guard (3...5).contains(rank) else { return layoutClass == "plain" ? try plainDescriptor(shape) : nil }
        switch layoutClass {
        case "plain": return try plainDescriptor(shape)
        case "nhwc": return try memoryDescriptor(shape, [dnnl_nwc, dnnl_nhwc, dnnl_ndhwc][rank - 3])
        case "blocked16": return try memoryDescriptor(shape, [dnnl_aBc16b, dnnl_aBcd16b, dnnl_aBcde16b][rank - 3])
        case "blocked8": return try memoryDescriptor(shape, [dnnl_aBc8b, dnnl_aBcd8b, dnnl_aBcde8b][rank - 3])
        default: return nil
        }
    }

    /// Best of five runs, after one warm-up; a candidate whose warm-up already takes
    /// longer than `limit` (three times the best so far) is not timed further.
    static func bestTime(limit: Double = .infinity, _ body: () throws -> Void) throws -> Double {
        let start = DispatchTime.now().uptimeNanoseconds
        try body()
        let warmUp = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        if warmUp > limit { return warmUp }
        var best = Double.infinity
        for _ in 0..<5 {
            let start = DispatchTime.now().uptimeNanoseconds
            try body()
            best = min(best, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
        }
        return best
    }

    static func timeReorder(_ shape: [Int], from: String, to: String, engine: DNNLEngine, stream: DNNLStream) throws -> TimingCache.Entry {
        guard let a = try descriptor(from, shape: shape), let b = try descriptor(to, shape: shape) else {
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

/// A convolution layer's parameters for timing its candidates.
struct ConvolutionSpec {
    let inputShape: [Int]
    let weights: Tensor
    let bias: Tensor?
    let geometry: WindowGeometry
    /// Spatial kernel size.
    let kernel: [Int]
    let group: Int
    let activation: Activation?
    let residual: Bool

    init(_ layer: Layer, constants: ConstantStore, inputShape: [Int]) throws {
        let context = EvalContext(name: layer.name, opType: layer.opType, domain: layer.domain, outputCount: layer.outputs.count,
                                  attributes: layer.attributes, opset: layer.opset, inputs: []) { _, _ in [] }
        guard layer.inputs.count > 1, let w = constants[layer.inputs[1]], w.dataType == .float, w.rank == inputShape.count,
              (3...5).contains(w.rank) else { throw PlanUnsupported(reason: "not a oneDNN convolution") }
        let bias = layer.inputs.count > 2 && !layer.inputs[2].isEmpty ? constants[layer.inputs[2]] : nil
        if layer.inputs.count > 2 && !layer.inputs[2].isEmpty && bias == nil { throw PlanUnsupported(reason: "bias is not constant") }
        let attrs = try WindowAttributes(context)
        kernel = attrs.kernelShape ?? Array(w.shape[2...])
        geometry = try attrs.geometry(context, input: Array(inputShape[2...]), kernel: kernel)
        guard geometry.output.allSatisfy({ $0 > 0 }), inputShape[1] == w.shape[1] * attrs.group else { throw PlanUnsupported(reason: "shapes do not fit") }
        self.inputShape = inputShape
        weights = w
        self.bias = bias
        group = attrs.group
        activation = try fusedActivation(context)
        residual = layer.inputs.count > 3 && !layer.inputs[3].isEmpty
    }

    /// What decides the timing: shapes, window, group, fused work.
    var key: String {
        let g = geometry
        return "x\(inputShape)w\(weights.shape)g\(group)s\(g.strides)d\(g.dilations)p\(g.padsBegin)\(g.padsEnd)"
            + "b\(bias != nil ? 1 : 0)a\(activation.map { "\($0)" } ?? "-")r\(residual ? 1 : 0)"
    }

    func time(_ tactic: ConvolutionTactic, engine: DNNLEngine, stream: DNNLStream, limit: Double = .infinity) throws -> TimingCache.Entry {
        let conv = try DNNLConvolution(engine: engine, inputShape: inputShape, weights: weights, bias: bias, geometry: geometry, group: group,
                                       activation: activation, residual: residual, layout: tactic.layout, winograd: tactic.winograd)
        let source = UnsafeMutableRawPointer.allocate(byteCount: max(conv.inputDescriptor.byteCount, 64), alignment: 64)
        let target = UnsafeMutableRawPointer.allocate(byteCount: max(conv.outputDescriptor.byteCount, 64), alignment: 64)
        defer { source.deallocate(); target.deallocate() }
        source.initializeMemory(as: UInt8.self, repeating: 0, count: conv.inputDescriptor.byteCount)
        target.initializeMemory(as: UInt8.self, repeating: 0, count: conv.outputDescriptor.byteCount)
        let seconds = try TacticSelector.bestTime(limit: limit) { try conv.runInPlace(stream: stream, input: source, output: target) }
        let outputShape = conv.outputShape
        return TimingCache.Entry(seconds: seconds, source: TacticSelector.layoutClass(conv.inputDescriptor.descriptor, shape: inputShape),
                                 destination: TacticSelector.layoutClass(conv.outputDescriptor.descriptor, shape: outputShape))
    }
}
