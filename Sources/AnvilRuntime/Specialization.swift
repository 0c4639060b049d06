import AnvilCore
import AnvilEngine
import AnvilKernels

/// A graph specialized for one set of input shapes: its Ifs whose conditions follow from
/// the shapes alone replaced by the branches they take.
///
/// Exporters trace Python `if`s on shapes into If nodes (`if state.shape[1] == …`,
/// `if x.numel() == 0`). Built with fixed shapes, constant folding settles them; an engine
/// with dynamic dimensions meets them at run time, where every If and whatever reads its
/// results would run on the layer interpreter. A plan is made for concrete input shapes,
/// so such a condition is fixed for it: the context finds the Ifs whose condition is
/// computed only from constants and the shapes of values whose shapes do not depend on the
/// data (`shapeDetermined`), runs the graph once to see which branch each takes, inlines
/// those branches (then again for Ifs inside them) and plans the result with the types
/// one more run observes. The plan still
/// computes every such condition and the context checks it on each run (`guards`): a
/// condition that differs from the one planned makes it plan the graph unspecialized.
struct Specialization {
    /// The specialized graph (the engine's inputs, outputs and constants, with the
    /// inlined branches' constants chained in front).
    let graph: EngineGraph
    /// The conditions the inlined branches assume: value name and the branch taken.
    let guards: [(name: String, value: Bool)]
    /// Every value's type in the specialized graph for these inputs (observed on its last run).
    let types: [String: (DataType, [Int])]

    /// Ops whose outputs' shapes depend on the values of the inputs at these positions.
    static let valueShaped: [String: [Int]] = [
        "Reshape": [1], "Expand": [1], "Tile": [1], "Slice": [1, 2, 3, 4], "ConstantOfShape": [0], "Range": [0, 1, 2],
        "Resize": [1, 2, 3], "Upsample": [1], "Pad": [1, 3], "TopK": [1], "OneHot": [1], "Squeeze": [1], "Unsqueeze": [1],
        "Split": [1], "ReduceSum": [1], "ReduceMean": [1], "ReduceMax": [1], "ReduceMin": [1], "ReduceProd": [1], "ReduceL1": [1],
        "ReduceL2": [1], "ReduceLogSum": [1], "ReduceLogSumExp": [1], "ReduceSumSquare": [1], "CenterCropPad": [1], "Col2Im": [1, 2],
        "DFT": [1, 2], "STFT": [1, 2, 3], "MaxUnpool": [2], "AffineGrid": [1], "HannWindow": [0], "HammingWindow": [0],
        "BlackmanWindow": [0], "MelWeightMatrix": [0, 1, 2], "SplitToSequence": [1], "EyeLike": [], "RandomNormalLike": [],
    ]
    /// Ops whose outputs' shapes depend on the data itself, or that hold subgraphs.
    static let dataShaped: Set<String> = ["NonZero", "NonMaxSuppression", "Unique", "Compress", "If", "Loop", "Scan", "StringSplit", "StringNormalizer"]
    /// Ops whose results are not a function of their inputs.
    static let random: Set<String> = ["RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial"]

    /// Values of `layers` whose contents follow from the input shapes alone: constants, the
    /// shapes and sizes of values whose shapes do not depend on the data, and what pure
    /// layers compute from those only.
    static func shapeDetermined(_ layers: [Layer], inputs: [String], constants: ConstantStore) -> Set<String> {
        var stable = Set(inputs), determined = Set<String>()
        func isConstant(_ name: String) -> Bool { constants.contains(name) || determined.contains(name) }
        for layer in layers {
            let present = layer.inputs.filter { !$0.isEmpty }
            let subgraphs = !GraphInterpreter<EngineGraph>.subgraphs(of: layer).isEmpty
            let standard = layer.domain.isEmpty
            // Anvil's own ops keep their standard counterparts' shapes; other domains' are not known here.
            if !subgraphs, standard || layer.domain == anvilDomain, !(standard && (random.contains(layer.opType) || dataShaped.contains(layer.opType))),
               present.allSatisfy({ stable.contains($0) || isConstant($0) }),
               (standard ? valueShaped[layer.opType] ?? [] : []).allSatisfy({ $0 >= layer.inputs.count || layer.inputs[$0].isEmpty || isConstant(layer.inputs[$0]) }) {
                stable.formUnion(layer.outputs)
            }
            guard !subgraphs, !(standard && random.contains(layer.opType)) else { continue }
            if standard, layer.opType == "Shape" || layer.opType == "Size", let x = present.first, stable.contains(x) || isConstant(x) {
                determined.formUnion(layer.outputs.filter { !$0.isEmpty })
            } else if present.isEmpty ? standard && layer.opType == "Constant" : present.allSatisfy(isConstant) {
                determined.formUnion(layer.outputs.filter { !$0.isEmpty })
            }
        }
        return determined
    }

    /// The top-level Ifs of `layers` whose condition follows from the input shapes.
    static func candidates(_ layers: [Layer], inputs: [String], constants: ConstantStore) -> [Layer] {
        let determined = shapeDetermined(layers, inputs: inputs, constants: constants)
        return layers.filter { $0.opType == "If" && $0.domain.isEmpty && $0.inputs.first.map(determined.contains) == true }
    }

    /// A context's oneDNN kernels for the interpreter's runs: results of a top-level layer
    /// whose weights are in the given constants, nil for the reference kernel.
    typealias FastKernels = (Layer, EvalContext, ConstantStore) throws -> [Tensor]?

    /// `engine`'s graph for inputs like `inputs`, its shape-conditioned Ifs inlined (up to
    /// eight rounds, for Ifs inside inlined branches), with its values' types; nil when it
    /// has none. Each round runs the graph once on the interpreter (with `fast` kernels) to
    /// see the conditions; the last run, of the final graph, gives the types.
    static func make(_ engine: Engine, inputs: [String: Tensor], fast: FastKernels? = nil) throws -> Specialization? {
        let original = engine.graph
        var graph = original
        var guards: [(name: String, value: Bool)] = []
        let inputNames = original.inputs.map(\.name)
        for round in 0...8 {
            let ifs = round < 8 ? candidates(graph.layers, inputs: inputNames, constants: graph.constants) : []
            if ifs.isEmpty, graph === original { return nil }
            // One run of the graph as it stands: the conditions to settle, and every value's type.
            let conditions = Set(ifs.map { $0.inputs[0] })
            var seen: [String: Tensor] = [:]
            var types: [String: (DataType, [Int])] = [:]
            var interpreter = GraphInterpreter<EngineGraph> { $0.opset }
            interpreter.observe = { name, value, depth in
                guard depth == 0 else { return }
                types[name] = (value.dataType, value.shape)
                if conditions.contains(name) { seen[name] = value }
            }
            let store = graph.constants
            if let fast { interpreter.evaluateFast = { layer, depth, context in depth == 0 ? try fast(layer, context, store) : nil } }
            _ = try interpreter.run(graph, inputs: inputs)
            var taken: [String: Bool] = [:]
            for layer in ifs {
                let cond = layer.inputs[0]
                guard let value = try seen[cond] ?? graph.constants.tensor(cond), value.count == 1, value.dataType == .bool else { continue }
                taken[layer.name] = value.bools[0]
            }
            if !ifs.isEmpty, let next = inline(graph, taken: taken) {
                guards += ifs.compactMap { layer in taken[layer.name].map { (layer.inputs[0], $0) } }
                graph = next
                continue
            }
            guard graph !== original else { return nil }
            for (name, t) in inputs { types[name] = (t.dataType, t.shape) }
            return Specialization(graph: graph, guards: guards, types: types)
        }
        return nil
    }

    /// `graph` with each If named in `taken` replaced by the branch it takes; nil when none
    /// could be. Branch layers are renamed "<If>|then|<layer>" (kernels are shared by
    /// layer name); branch values keep their names unless the graph already uses them, in
    /// which case the If stays (renaming would have to reach into nested subgraphs).
    static func inline(_ graph: EngineGraph, taken: [String: Bool]) -> EngineGraph? {
        var used = Set(graph.inputs.map(\.name)).union(graph.constants.names)
        for layer in graph.layers { used.formUnion(layer.outputs) }
        var layers: [Layer] = []
        var constants = graph.constants
        var changed = false
        for layer in graph.layers {
            guard let then = taken[layer.name], case .graph(let s)? = layer.attributes[then ? "then_branch" : "else_branch"],
                  let branch = s as? EngineGraph, branch.inputs.isEmpty, branch.outputs.count >= layer.outputs.count else {
                layers.append(layer)
                continue
            }
            let defined = branch.layers.flatMap(\.outputs).filter { !$0.isEmpty }
            // The branch's constants join the graph's: one of a name the graph already uses must
            // be the very same constant (a small one the optimizer copied into the branch).
            let clashing = branch.constants.names.contains { name in
                guard used.contains(name) else { return false }
                guard let mine = try? branch.constants.tensor(name), mine.count <= 4096, let theirs = try? constants.tensor(name) else { return true }
                return mine != theirs
            }
            guard !clashing, !defined.contains(where: used.contains), Set(defined).count == defined.count else {
                layers.append(layer)
                continue
            }
            used.formUnion(branch.constants.names)
            let branchName = then ? "then" : "else"
            for var inner in branch.layers {
                inner.name = "\(layer.name)|\(branchName)|\(inner.name)"
                layers.append(inner)
            }
            used.formUnion(defined)
            // The If's outputs take the branch's results.
            for (i, output) in layer.outputs.enumerated() where !output.isEmpty {
                layers.append(Layer(name: "\(layer.name)|\(branchName)|output \(i)", opType: "Identity", domain: "", opset: layer.opset,
                                    inputs: [branch.outputs[i].name], outputs: [output], attributes: [:], fusedFrom: layer.fusedFrom))
            }
            if branch.constants.count > 0 { constants = ConstantStore(chaining: branch.constants, to: constants) }
            changed = true
        }
        guard changed else { return nil }
        return EngineGraph(name: graph.name, inputs: graph.inputs, outputs: graph.outputs, constants: constants, layers: layers,
                           valueTypes: graph.valueTypes)
    }
}
