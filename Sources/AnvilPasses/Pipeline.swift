import AnvilCore
import AnvilIR
import Dispatch

/// The optimization pipelines, as data: nothing but the ordered list of passes.
public enum Pipelines {
    /// Every pass, in pipeline order.
    public static var standard: [any Pass] {
        [
            FoldConstants(),
            LowerIntegerLinear(),
            EliminateNoOps(),
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
        return context
    }
}
