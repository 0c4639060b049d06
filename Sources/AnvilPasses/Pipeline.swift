import AnvilCore
import AnvilIR
import Dispatch

/// The optimization pipelines, as data: nothing but the ordered list of passes.
public enum Pipelines {
    /// Every pass, in pipeline order.
    public static var standard: [any Pass] {
        [
            FoldQuantizedLayers(),
            FoldConstants(),
            InlineConstantIf(),
            LowerIntegerLinear(),
            EliminateNoOps(),
            ScatterRows(),
            ResolveReshapeTargets(),
            EliminateCommonSubexpressions(),
            DeduplicateConstants(),
            FoldBatchNormAndScales(),
            FoldPadIntoConv(),
            RecognizeActivations(),
            RecognizeNormalizations(),
            RecognizeAttention(),
            FuseMatMulBias(),
            FuseResidualAdd(),
            FuseActivation(),
            EliminateZeroBranches(),
            PruneZeroChannels(),
            EliminateDeadCode(),
        ]
    }

    /// Names of all passes, for --passes / --skip and their help.
    public static var passNames: [String] { standard.map(\.name) }
}

/// Options of one pipeline run.
public struct PipelineOptions {
    /// Run only these passes (in pipeline order); nil runs all.
    public var only: Set<String>?
    /// Skip these passes.
    public var skip: Set<String> = []
    /// Print the IR after these passes ("all" for every pass).
    public var printIRAfter: Set<String> = []
    /// Stop after the first run of this pass.
    public var stopAfter: String?
    /// Verify the graph after every pass (on in debug builds and with ANVIL_VERIFY=1).
    public var verify = Verifier.enabledByDefault
    /// Keep the graph in standard ONNX ops (no ai.anvil fused ops).
    public var standardOnly = false
    /// Repetitions of the whole pipeline before giving up on a fixpoint.
    public var maxRounds = 8
    /// Where --print-ir-after output goes.
    public var printer: (String) -> Void = { print($0, terminator: "") }
    public init() {}
}

/// Runs a pipeline over a model until nothing changes.
public struct PipelineRunner {
    public let passes: [any Pass]
    public var options: PipelineOptions

    public init(passes: [any Pass] = Pipelines.standard, options: PipelineOptions = PipelineOptions()) throws {
        let known = Set(passes.map(\.name))
        for name in (options.only ?? []).union(options.skip).union(options.printIRAfter.subtracting(["all"])).union(options.stopAfter.map { [$0] } ?? [])
        where !known.contains(name) {
            throw AnvilError.invalidArgument("unknown pass '\(name)'; passes are: \(passes.map(\.name).joined(separator: ", "))")
        }
        self.passes = passes.filter { (options.only?.contains($0.name) ?? true) && !options.skip.contains($0.name) }
        self.options = options
    }

    /// A runner of passes already selected by a runner's options.
    private init(checkedPasses: [any Pass], options: PipelineOptions) {
        self.passes = checkedPasses
        self.options = options
    }

    /// Optimizes the model in place; returns the context with statistics.
    @discardableResult
    public func run(_ model: Model) throws -> PassContext {
        let context = PassContext(model: model)
        context.standardOnly = options.standardOnly
        // Initializers listed as graph inputs (IR < 4 style) are weights here, as in the executor.
        let before = model.graph.inputs.count
        model.graph.inputs.removeAll { model.graph.initializers[$0.name] != nil }
        if model.graph.inputs.count != before { context.statistics["normalize", default: [:]]["initializer inputs made weights"] = before - model.graph.inputs.count }
        for _ in 0..<options.maxRounds {
            var changed = false
            for pass in passes {
                context.current = pass.name
                context.history.append(pass.name)
                let start = DispatchTime.now().uptimeNanoseconds
                let didChange = try pass.run(context)
                context.seconds[pass.name, default: 0] += Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                changed = changed || didChange
                if options.verify {
                    do {
                        try Verifier.verify(model.graph)
                    } catch {
                        throw AnvilError.invalidGraph(graph: model.graph.name, reason: "after pass \(pass.name): \(error)")
                    }
                }
                if options.printIRAfter.contains("all") || options.printIRAfter.contains(pass.name) {
                    options.printer("// IR after \(pass.name)\n" + Printer.print(model.graph))
                }
                if options.stopAfter == pass.name { return context }
            }
            if !changed { break }
        }
        try optimizeBodies(model, context: context)
        return context
    }

    /// Optimizes every control-flow body (If branches, Loop and Scan bodies) with the same
    /// passes, as a graph of its own, so that a body gets the folding and fusions the main
    /// graph gets (Silero VAD's whole network sits in the branches of an If). While it is
    /// optimized, the values the body reads from the enclosing graph are declared as its
    /// inputs, typed as inference finds them there; the enclosing graph's constants it reads
    /// become its own where no other node or body reads them, or where they are small, so
    /// that folding sees its weights. Nested bodies follow, from the body's own run.
    private func optimizeBodies(_ model: Model, context: PassContext) throws {
        let graph = model.graph
        let holders = graph.nodes.filter { !$0.subgraphs.isEmpty }
        guard !holders.isEmpty else { return }
        let facts = (try? context.inferFacts()) ?? [:]
        // Per constant, how many nodes and bodies read it.
        var readers: [String: Int] = [:]
        for node in graph.nodes {
            for name in Set(node.inputs) where graph.initializers[name] != nil { readers[name, default: 0] += 1 }
            for sub in node.subgraphs {
                for name in UseIndex.outerReferences(sub) where graph.initializers[name] != nil { readers[name, default: 0] += 1 }
            }
        }
        var nested = options
        nested.printIRAfter = []
        nested.stopAfter = nil
        let runner = PipelineRunner(checkedPasses: passes, options: nested)
        var tookConstants = false
        for body in holders.flatMap(\.subgraphs) {
            var declared: [ValueInfo] = []
            for name in UseIndex.outerReferences(body).sorted() {
                if let t = graph.initializers[name], readers[name] == 1 || t.count <= 64 {
                    body.setInitializer(name, t)
                    tookConstants = true
                } else {
                    let type = graph.initializers[name].map { TensorType($0.dataType, shape: $0.shape) }
                    declared.append(ValueInfo(name: name, type: type ?? facts[name]?.type ?? graph.valueTypes[name] ?? TensorType(nil, nil)))
                }
            }
            // The body's own inputs keep only their element types while it is optimized: a Loop's
            // carried values may change shape between iterations whatever the body declares.
            let own = body.inputs
            body.inputs = own.map { ValueInfo(name: $0.name, type: TensorType($0.type.elementType, nil)) } + declared
            let bodyModel = Model(graph: body, opsets: model.opsets, irVersion: model.irVersion)
            defer { body.inputs = own }
            let bodyContext = try runner.run(bodyModel)
            for o in bodyModel.opsets where model.opsetVersion(domain: o.domain) == nil { model.opsets.append(o) }
            for (pass, counts) in bodyContext.statistics {
                for (what, n) in counts { context.statistics[pass, default: [:]][what, default: 0] += n }
            }
            for (pass, seconds) in bodyContext.seconds { context.seconds[pass, default: 0] += seconds }
            model.warnings += bodyModel.warnings
        }
        // Constants now held by the bodies alone.
        if tookConstants, let dce = passes.first(where: { $0 is EliminateDeadCode }) { _ = try dce.run(context) }
    }
}
