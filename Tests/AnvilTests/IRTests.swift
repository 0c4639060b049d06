import AnvilCore
import AnvilIR
import XCTest

final class IRTests: XCTestCase {
    func smallGraph() throws -> Graph {
        Graph(name: "g",
              inputs: [ValueInfo(name: "x", type: TensorType(.float, [.symbol("N"), .known(4)]))],
              outputs: [ValueInfo(name: "y", type: TensorType(.float, [.symbol("N"), .known(4)]))],
              nodes: [Node(name: "add1", opType: "Add", inputs: ["x", "b"], outputs: ["t"]),
                      Node(name: "relu1", opType: "Relu", inputs: ["t"], outputs: ["y"])],
              initializers: [("b", try Tensor(floats: [1, 2, 3, 4], shape: [4]))])
    }

    func testVerifierAcceptsAWellFormedGraph() throws {
        XCTAssertNoThrow(try Verifier.verify(try smallGraph()))
    }

    func testVerifierFindsOutOfOrderNodes() throws {
        let g = try smallGraph()
        g.nodes.reverse()
        XCTAssertThrowsError(try Verifier.verify(g)) { XCTAssertTrue("\($0)".contains("'t' is not defined before it"), "\($0)") }
    }

    func testVerifierFindsDoubleDefinitions() throws {
        let g = try smallGraph()
        g.nodes[1].outputs = ["t"]
        XCTAssertThrowsError(try Verifier.verify(g)) { XCTAssertTrue("\($0)".contains("defined more than once"), "\($0)") }
    }

    func testVerifierFindsDanglingOutputs() throws {
        let g = try smallGraph()
        g.outputs.append(ValueInfo(name: "nowhere", type: .unknown))
        XCTAssertThrowsError(try Verifier.verify(g)) { XCTAssertTrue("\($0)".contains("'nowhere' is not produced"), "\($0)") }
    }

    func testVerifierFindsInitializerTypeConflicts() throws {
        let g = try smallGraph()
        g.inputs.append(ValueInfo(name: "b", type: TensorType(.int64, shape: [4])))
        XCTAssertThrowsError(try Verifier.verify(g)) { XCTAssertTrue("\($0)".contains("initializer 'b'"), "\($0)") }
    }

    func testVerifierSeesOuterScopeFromSubgraphs() throws {
        let body = Graph(name: "then", outputs: [ValueInfo(name: "z", type: .unknown)],
                         nodes: [Node(name: "inner", opType: "Neg", inputs: ["x"], outputs: ["z"])])
        let g = try smallGraph()
        g.nodes.append(Node(name: "if1", opType: "If", inputs: ["c"], outputs: ["w"], attributes: ["then_branch": .graph(body)]))
        g.inputs.append(ValueInfo(name: "c", type: TensorType(.bool, shape: [])))
        XCTAssertNoThrow(try Verifier.verify(g))
        body.nodes[0].inputs = ["undefined_outer"]
        XCTAssertThrowsError(try Verifier.verify(g)) { XCTAssertTrue("\($0)".contains("undefined_outer"), "\($0)") }
    }

    func testPrinterShowsTypesAttributesAndProvenance() throws {
        let g = try smallGraph()
        g.nodes[0].attributes["note"] = .ints([1, 2])
        g.valueTypes["t"] = TensorType(.float, [.symbol("N"), .known(4)])
        let text = Printer.print(g)
        XCTAssertEqual(text, """
        graph g(%x: float[N,4]) -> (%y: float[N,4]) {
          const %b: float[4]
          %t: float[N,4] = Add[note=[1,2]](%x, %b)   # add1
          %y = Relu(%t)   # relu1
        }

        """)
    }
}
