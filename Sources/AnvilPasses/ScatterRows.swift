import AnvilCore
import AnvilKernels
import AnvilIR
import AnvilOps

/// Rewrites ScatterElements along axis 0 whose indices repeat one index per row (an
/// Expand of [K, 1, …, 1]) into ScatterND of whole rows, when the updates' rows are
/// as long as the data's: torchvision's MultiScaleRoIAlign writes each pyramid level's
/// pooled boxes into the result this way (`result[idx] = roi_align(…)`), and the
/// exported graph materializes an index for every element (12.5M for Faster R-CNN's
/// 1,000 boxes of 256 × 7 × 7) that ScatterND replaces by one index per box.
public struct ScatterRows: Pass {
    public let name = "scatter-rows"
    public let summary = "ScatterElements of whole rows (indices expanded from one per row) as ScatterND"
    public init() {}
    public func run(_ context: PassContext) throws -> Bool { try RewriteDriver([Self.rule]).run(context) }

    static let rule = RewriteRule("scatter rows", roots: ["ScatterElements"]) { node, ctx in
        let a = AttributeReader(node: node)
        guard node.domain.isEmpty, node.inputs.count == 3, node.outputs.count == 1, try a.int("axis", 0) == 0,
              try a.string("reduction", "none") == "none",
              let expand = ctx.producer(node.inputs[1]), expand.opType == "Expand", expand.domain.isEmpty else { return nil }
        let rows = expand.inputs[0]
        let index = ctx.type(rows), updates = ctx.type(node.inputs[2]), data = ctx.type(node.inputs[0])
        func same(_ x: Dim, _ y: Dim) -> Bool { x == y && x != .unknown }
        // One int64 index per row of the updates, each row as long as the data's.
        guard index.elementType == .int64, let i = index.dims, let u = updates.dims, let d = data.dims,
              i.count == u.count, u.count == d.count, !u.isEmpty, same(i[0], u[0]), i.dropFirst().allSatisfy({ $0 == .known(1) }),
              zip(u.dropFirst(), d.dropFirst()).allSatisfy(same) else { return nil }
        let shapeName = "\(node.name)/rows_shape", indexName = "\(node.name)/rows"
        guard ctx.graph.initializers[shapeName] == nil, ctx.producer(indexName) == nil else { return nil }
        let reshape = Node(name: "\(node.name)/rows", opType: "Reshape", inputs: [rows, shapeName], outputs: [indexName])
        let scatter = Node(name: node.name, opType: "ScatterND", inputs: [node.inputs[0], indexName, node.inputs[2]], outputs: node.outputs,
                           fusedFrom: node.fusedFrom)
        return Patch(statistic: "ScatterElements of rows as ScatterND", remove: [node], add: [reshape, scatter],
                     initializers: [(shapeName, try Tensor(int64s: [-1, 1], shape: [2]))])
    }
}
