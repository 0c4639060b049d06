import AnvilCore
import AnvilIR
import AnvilOps
import AnvilPasses
import XCTest

/// scatter-rows: ScatterElements of whole rows (torchvision's MultiScaleRoIAlign) as ScatterND.
final class ScatterRowsTests: XCTestCase {
    /// result = zeros; result[rows] = updates, exported as ScatterElements(axis 0) with the
    /// row indices reshaped to [K, 1, 1] and expanded to the updates' shape. `rowLength` is
    /// the updates' last size (the data's is 4).
    func model(rowLength: Int = 4, reduction: String? = nil) throws -> Model {
        var attributes: [String: Attribute] = ["axis": .int(0)]
        if let reduction { attributes["reduction"] = .string(reduction) }
        let g = Graph(name: "rows",
                      inputs: [ValueInfo(name: "data", type: TensorType(.float, shape: [6, 3, 4])),
                               ValueInfo(name: "updates", type: TensorType(.float, [.symbol("k"), .known(3), .known(rowLength)])),
                               ValueInfo(name: "rows", type: TensorType(.int64, [.symbol("k")]))],
                      outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                      nodes: [
                        Node(name: "view", opType: "Reshape", inputs: ["rows", "shape"], outputs: ["column"]),
                        Node(name: "size", opType: "Shape", inputs: ["updates"], outputs: ["target"]),
                        Node(name: "expand", opType: "Expand", inputs: ["column", "target"], outputs: ["index"]),
                        Node(name: "scatter", opType: "ScatterElements", inputs: ["data", "index", "updates"], outputs: ["y"], attributes: attributes),
                      ],
                      initializers: [("shape", try Tensor(int64s: [-1, 1, 1], shape: [3]))])
        return Model(graph: g, opsets: [OpsetImport(domain: "", version: 18)])
    }

    func feed(rowLength: Int = 4) throws -> [String: Tensor] {
        var rng = SeededGenerator(seed: 2)
        func random(_ shape: [Int]) throws -> Tensor {
            try Tensor(floats: (0..<shape.reduce(1, *)).map { _ in Float.random(in: -1...1, using: &rng) }, shape: shape)
        }
        return ["data": try random([6, 3, 4]), "updates": try random([3, 3, rowLength]), "rows": try Tensor(int64s: [4, -6, 2], shape: [3])]
    }

    func testWholeRowsBecomeScatterND() throws {
        let passes: [any Pass] = [ScatterRows(), EliminateDeadCode()]
        try PassTesting.assertPreservesOutputs({ try self.model() }, passes, inputs: try feed())
        let m = try model()
        let (_, context) = try PassTesting.optimized(m, passes)
        XCTAssertEqual(context.statistics["scatter-rows"]?["ScatterElements of rows as ScatterND"], 1)
        XCTAssertEqual(m.graph.nodes.map(\.opType), ["Reshape", "Reshape", "ScatterND"])
    }

    func testPartialRowsAndReductionsStay() throws {
        for m in [try model(rowLength: 2), try model(reduction: "add")] {
            let (_, context) = try PassTesting.optimized(m, [ScatterRows()])
            XCTAssertNil(context.statistics["scatter-rows"])
            XCTAssertTrue(m.graph.nodes.contains { $0.opType == "ScatterElements" })
        }
    }
}
