/**
 * Local time for policies: the hour (0–23) and ISO weekday (1 = Monday … 7 = Sunday)
 * of an instant in an IANA time zone.
 */
const formatters = new Map<string, Intl.DateTimeFormat>()
const WEEKDAYS: Record<string, number> = { Mon: 1, Tue: 2, Wed: 3, Thu: 4, Fri: 5, Sat: 6, Sun: 7 }

function formatter (timeZone: string): Intl.DateTimeFormat {
  let f = formatters.get(timeZone)
  if (f === undefined) {
    f = new Intl.DateTimeFormat('en-US', { timeZone, hour: 'numeric', hourCycle: 'h23', weekday: 'short' })
    formatters.set(timeZone, f)
  }
  return f
}

/** True when the runtime knows the zone. */
export function isTimeZone (timeZone: string): boolean {
  try { formatter(timeZone); return true } catch { return false }
}

export function localTime (at: Date, timeZone: string): { localHour: number, localWeekday: number } {
  let localHour = 0
  let localWeekday = 0
  for (const part of formatter(timeZone).formatToParts(at)) {
    if (part.type === 'hour') localHour = Number(part.value)
    else if (part.type === 'weekday') localWeekday = WEEKDAYS[part.value] ?? 0
  }
  return { localHour, localWeekday }
}

/** A fixed-offset IANA zone (`Etc/GMT±N`) in which the local hour is `hour` at `at`. */
export function zoneWhereHourIs (hour: number, at = new Date()): string {
  let offset = ((hour - at.getUTCHours()) % 24 + 24) % 24
  if (offset > 14) offset -= 24
  return offset === 0 ? 'Etc/GMT' : offset > 0 ? `Etc/GMT-${offset}` : `Etc/GMT+${-offset}`
}
