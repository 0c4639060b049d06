import AnvilFuzzTargets
import Foundation
import XCTest

/// Replays every input that once crashed a fuzz target (fixtures/fuzz/regressions/TARGET,
/// saved by tools/fuzz): each must now be refused or read, never crash the process.
final class FuzzRegressionTests: XCTestCase {
    func testInputsThatOnceCrashedAreHandled() throws {
        var replayed = 0
        for target in FuzzTarget.allCases {
            let folder = TestSupport.fixture("fuzz/regressions/\(target.rawValue)")
            let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
            for name in names.sorted() {
                let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: "\(folder)/\(name)")))
                target.run(bytes)
                replayed += 1
            }
        }
        XCTAssertGreaterThan(replayed, 0, "no regression inputs found under fixtures/fuzz/regressions")
    }
}
