import AnvilCore
import COneDNN
import Foundation

/// One step of a planned run. Steps are created while planning, bound to arena
/// addresses once the memory plan is known, then run many times without
/// allocating (the reference fallback excepted).
class PlanStep {
    /// The layer this step belongs to (reorders name the layer they feed).
    let layer: String
    /// What runs: the oneDNN implementation, "reorder", "view", "swift" or "reference".
    var implementation: String
    /// Values read and written, for liveness.
    var reads: [PlanValue]
    var writes: [PlanValue]

    init(layer: String, implementation: String, reads: [PlanValue], writes: [PlanValue]) {
        self.layer = layer
        self.implementation = implementation
        self.reads = reads
        self.writes = writes
    }

    /// Creates whatever depends on addresses (oneDNN memory objects).
    func bind(_ plan: ExecutionPlan) throws {}
    func run(_ plan: ExecutionPlan, stream: DNNLStream) throws {}
}

/// A oneDNN primitive with its arguments bound once to arena or constant memory.
final class PrimitiveStep: PlanStep {
    let primitive: DNNLPrimitive
    /// Argument kind, value, and the descriptor it is read or written through.
    let arguments: [(arg: Int32, value: PlanValue, descriptor: dnnl_memory_desc_t)]
    /// Arguments that are not plan values (packed weights, bias).
    let fixed: [(Int32, DNNLMemory)]
    /// Copies made before execution (a residual into a destination it cannot share).
    let copies: [(from: PlanValue, to: PlanValue)]
    private var memories: [DNNLMemory] = []
    private var list: [dnnl_exec_arg_t] = []

    init(layer: String, primitive: DNNLPrimitive, arguments: [(arg: Int32, value: PlanValue, descriptor: dnnl_memory_desc_t)],
         fixed: [(Int32, DNNLMemory)] = [], copies: [(from: PlanValue, to: PlanValue)] = [], implementation: String? = nil) {
        self.primitive = primitive
        self.arguments = arguments
        self.fixed = fixed
        self.copies = copies
        let outputs: Set<Int32> = [DNNL_ARG_DST, DNNL_ARG_TO]
        super.init(layer: layer, implementation: implementation ?? primitive.implementation,
                   reads: arguments.filter { !outputs.contains($0.arg) }.map(\.value) + copies.map(\.from),
                   writes: arguments.filter { outputs.contains($0.arg) }.map(\.value))
    }

    override func bind(_ plan: ExecutionPlan) throws {
        memories = try arguments.map { try DNNLMemory($0.descriptor, engine: plan.engine, data: plan.address($0.value)) }
        list = zip(arguments, memories).map { dnnl_exec_arg_t(arg: $0.arg, memory: $1.handle) }
        list += fixed.map { dnnl_exec_arg_t(arg: $0.0, memory: $0.1.handle) }
        if primitive.scratchpadBytes > 0 {
            let scratch = try DNNLMemory(primitive.query(dnnl_query_scratchpad_md), engine: plan.engine, data: plan.scratchpad)
            memories.append(scratch)
            list.append(dnnl_exec_arg_t(arg: DNNL_ARG_SCRATCHPAD, memory: scratch.handle))
        }
    }

    override func run(_ plan: ExecutionPlan, stream: DNNLStream) throws {
        for (from, to) in copies {
            plan.address(to).copyMemory(from: plan.address(from), byteCount: from.byteCount)
        }
        try execute(stream)
    }

    /// The oneDNN call alone.
    func execute(_ stream: DNNLStream) throws {
        try check(dnnl_primitive_execute(primitive.handle, stream.handle, Int32(list.count), &list), "running layer '\(layer)'")
    }
}

/// A layer computed by its reference kernel: inputs are copied out of the arena
/// into tensors, the outputs back in (checked against the planned shapes).
final class ReferenceStep: PlanStep {
    let plan: Layer
    let definition: KernelDefinition
    /// Per input: a plan value, a constant tensor, or absent.
    let inputs: [Either]
    enum Either { case value(PlanValue), constant(Tensor), absent }

    init(_ layer: Layer, definition: KernelDefinition, inputs: [Either], outputs: [PlanValue]) {
        plan = layer
        self.definition = definition
        self.inputs = inputs
        super.init(layer: layer.name, implementation: "reference",
                   reads: inputs.compactMap { if case .value(let v) = $0 { v } else { nil } }, writes: outputs)
    }

    override func run(_ executionPlan: ExecutionPlan, stream: DNNLStream) throws {
        let args: [Tensor?] = try inputs.map { input in
            switch input {
            case .absent: return nil
            case .constant(let t): return t
            case .value(let v): return try executionPlan.tensor(v)
            }
        }
        let context = EvalContext(name: plan.name, opType: plan.opType, domain: plan.domain, outputCount: plan.outputs.count,
                                  attributes: plan.attributes, opset: plan.opset, inputs: args) { body, _ in
            throw AnvilError.invalidNode(node: self.plan.name, op: self.plan.opType, reason: "planned runs hold no subgraphs (\(body.name))")
        }
        let results = try definition.evaluate(context)
        var index = 0
        for (name, result) in zip(plan.outputs, results) where !name.isEmpty {
            defer { index += 1 }
            guard index < writes.count else { break }
            let target = writes[index]
            guard result.shape == target.shape, result.dataType == target.dataType else {
                throw PlanMismatch(layer: plan.name, value: name, planned: target.shape, actual: result.shape)
            }
            try executionPlan.store(result, into: target)
        }
    }
}

/// A value computed with a shape other than planned: the plan does not fit these
/// inputs (a data-dependent shape), so the run falls back to the interpreter.
public struct PlanMismatch: Error, CustomStringConvertible {
    public let layer: String, value: String
    public let planned: [Int], actual: [Int]
    public var description: String { "layer '\(layer)' produced '\(value)' with shape \(actual), planned \(planned)" }
}

/// A step computed by Swift code on raw arena pointers.
final class SwiftStep: PlanStep {
    let body: (ExecutionPlan) throws -> Void

    init(layer: String, reads: [PlanValue], writes: [PlanValue], body: @escaping (ExecutionPlan) throws -> Void) {
        self.body = body
        super.init(layer: layer, implementation: "swift", reads: reads, writes: writes)
    }

    override func run(_ plan: ExecutionPlan, stream: DNNLStream) throws { try body(plan) }
}
