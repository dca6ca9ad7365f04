/** The demo catalogue loaded into an empty inventory database. */
import type { NewProduct } from "./domain.js";

/**
 * Six products in USD. `limited-print` has a single unit so the demo and the
 * tests can run out of stock on purpose.
 */
export const DEMO_CATALOGUE: readonly NewProduct[] = [
  { id: "coffee-beans", name: "Single-origin coffee beans, 1 kg", priceMinor: 2400, currency: "USD", available: 100 },
  { id: "ceramic-mug", name: "Ceramic mug", priceMinor: 1500, currency: "USD", available: 200 },
  { id: "hand-grinder", name: "Hand grinder", priceMinor: 8900, currency: "USD", available: 10 },
  { id: "limited-print", name: "Limited edition print", priceMinor: 12000, currency: "USD", available: 1 },
  { id: "paper-filters", name: "Paper filters, 100 pack", priceMinor: 600, currency: "USD", available: 500 },
  { id: "pour-over-kettle", name: "Pour-over kettle", priceMinor: 5900, currency: "USD", available: 25 },
];
